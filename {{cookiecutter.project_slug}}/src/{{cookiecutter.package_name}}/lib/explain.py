"""Explanation maps (Grad-CAM, through captum) and their sanity check, the model-randomisation test.

Grad-CAM (Selvaraju et al., 2017) weighs a layer's feature maps by the gradient of a score: for classification
the logit of the predicted class, for segmentation the sum of the predicted class's logits over the pixels
predicted as foreground. The model-randomisation test (Adebayo et al., 2018, "Sanity checks for saliency
maps") computes the same maps for the same architecture with re-initialised weights: a method whose map
barely changes explains the input's edges, not the model, and its maps are flagged.

    >>> a, b = torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.tensor([[0.0, 2.0], [5.0, 9.0]])
    >>> rank_correlation(a, b)  # the same order of pixels: 1, whatever the values
    1.0
"""

import math

import numpy as np
import torch

from {{ cookiecutter.package_name }}.lib import task

# The layer explained: the last feature map of the encoder (smp) or of the whole classifier that keeps at least
# 1/MAX_STRIDE of the input's resolution. The final stride-32 map of a 64 px image is 2x2, which upsamples to
# blobs that say nothing about where in the image the evidence is; 1/8 keeps 8x8 at 64 px.
MAX_STRIDE = 8
MAX_LEVEL = int(math.log2(MAX_STRIDE))


def candidate_layers(model, x):
    """[(name, module, (h, w))] that Grad-CAM may explain for `model` at x's size, in the order their forward
    passes finish. Searched in the encoder of a segmentation model (smp keeps it in `.encoder`; decoder maps
    explain the decoder) and in the whole network of a classifier (its global pooling's 1x1 output drops out).
    A candidate's output is one 4-D tensor at 1/MAX_STRIDE of x's resolution or finer; its module runs once
    per forward (captum hooks a module, and one run twice, as torchvision's ResNet blocks run their ReLU, has no
    single output); and it is not the start of the next, coarser stage (resnet50's layer3.0.conv1, inside a
    block that takes this resolution in and gives a coarser one out), so the last candidate is the output of a
    whole stage or block at that resolution, whatever the library names it. A padding's output is not a
    feature map either."""
    net = getattr(model, "net", model)
    root = getattr(net, "encoder", net)
    seen = {}  # name -> [calls, input (h, w), output (h, w)]

    def shape(t):
        return tuple(t.shape[-2:]) if isinstance(t, torch.Tensor) and t.ndim == 4 else None

    def hook(name):
        def record(module, inputs, output):
            calls = seen.get(name, [0])[0] + 1
            seen[name] = [calls, shape(inputs[0]) if inputs else None, shape(output)]
        return record

    modules = dict(root.named_modules())
    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items() if n]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    size = x.shape[-2]

    def level(hw):  # the stride as a power of two, padding aside: 64 px in, 8x8 or a padded 9x9 out -> 3
        return None if hw is None else math.ceil(math.log2(size / hw[0]) - 1e-9)

    def starts_coarser_stage(name, hw):
        return any(name.startswith(other + ".") and level(inp) == level(hw) and level(out) != level(hw)
                   for other, (_, inp, out) in seen.items())

    return [(n, modules[n], out) for n, (calls, inp, out) in seen.items()
            if calls == 1 and out is not None and level(out) <= MAX_LEVEL
            and not (inp and out[0] > inp[0])  # a padding (timm's / efficientnet's static "same" padding)
            and not starts_coarser_stage(n, out)]


def target_layer(model, x):
    """(name, module) Grad-CAM explains for `model` at x's size (the last of candidate_layers)."""
    found = candidate_layers(model, x)
    if not found:
        raise ValueError(f"{type(getattr(model, 'net', model)).__name__}: no single-use layer keeps 1/{MAX_STRIDE} of "
                         f"a {x.shape[-2]}x{x.shape[-1]} input; explanation maps need larger images "
                         "(prepare.image_size)")
    name, module, _ = found[-1]
    return name, module


def targets(logits, t):
    """What each image's map explains, from the trained model's output: classification (B,) predicted classes;
    segmentation (B, H, W) the predicted class of each pixel predicted as foreground, -1 elsewhere (an image
    with no foreground predicted explains the foreground logit over the whole image)."""
    if t.name != "segmentation":
        return logits.argmax(1)
    pred = task.predict(logits, t)  # (B, H, W)
    region = torch.where(pred > 0, pred, -1)
    empty = (region < 0).flatten(1).all(1)
    region[empty] = 1  # the foreground class over the whole image
    return region


def score(logits, target, t):
    """(B,) the score whose gradient Grad-CAM uses: the target class's logit (classification), or the sum of the
    target classes' logits over the target region (segmentation; pytorch-grad-cam's SemanticSegmentationTarget)."""
    if t.name != "segmentation":
        return logits.gather(1, target[:, None])[:, 0]
    if t.binary:  # one foreground logit (B, 1, H, W)
        return (logits[:, 0] * (target > 0)).flatten(1).sum(1)
    chosen = logits.gather(1, target.clamp(min=0)[:, None])[:, 0]  # (B, H, W) logit of each pixel's class
    return (chosen * (target >= 0)).flatten(1).sum(1)


def grad_cam(model, x, target, t, layer):
    """(B, H, W) Grad-CAM maps of `model` for `target` at `layer`, upsampled to x's size and scaled to [0, 1] per
    image (an all-zero map stays zero)."""
    from captum.attr import LayerAttribution, LayerGradCam

    model.eval()
    cam = LayerGradCam(lambda inp: score(model(inp), target, t), layer)
    maps = cam.attribute(x, relu_attributions=True)  # (B, 1, h, w): ReLU(sum_k alpha_k A_k)
    maps = LayerAttribution.interpolate(maps, tuple(x.shape[-2:]), interpolate_mode="bilinear")[:, 0].detach()
    peak = maps.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]
    return maps / peak


def rank_correlation(a, b):
    """Spearman's rank correlation of two maps' pixels; None when either map is constant (no ranking)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def randomised(build, seed):
    """The same architecture, freshly initialised from `seed` (build() makes it; normalisation buffers are the
    data's, not learned, and stay)."""
    torch.manual_seed(seed)
    return build().eval()


def check(image, trained, control, max_correlation):
    """One image's randomisation check. A trained map that is constant explains nothing: flagged. A random-weights
    map that is constant (ReLU(CAM) of untrained weights is often all zero) shares nothing with a trained map
    that is not: passed, with no correlation to report."""
    rho = rank_correlation(trained, control)
    if np.ptp(trained.numpy()) == 0:
        return {"image": image, "spearman": rho, "flagged": True, "note": "trained map constant"}
    if rho is None:
        return {"image": image, "spearman": None, "flagged": False, "note": "random-weights map constant"}
    flagged = rho > max_correlation
    return {"image": image, "spearman": rho, "flagged": flagged,
            "note": f"unchanged by random weights (> {max_correlation})" if flagged else "changed"}


def explain(model, random_model, x, t, max_correlation):
    """Maps of the trained and of the randomised model for the images x (B, 3, H, W) in [0, 1], the trained
    model's predictions, and per image the rank correlation of the two maps and whether the map is flagged
    (check(): correlation above max_correlation, or a constant trained map)."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
    target = targets(logits, t)
    layer_name, layer = target_layer(model, x[:1])
    trained = grad_cam(model, x, target, t, layer)
    _, random_layer = target_layer(random_model, x[:1])  # same name: same architecture
    control = grad_cam(random_model, x, target, t, random_layer)
    rows = [check(i, trained[i], control[i], max_correlation) for i in range(len(x))]
    return {"layer": layer_name, "trained": trained, "randomised": control, "predictions": task.predict(logits, t),
            "rows": rows}


def metrics_of(rows):
    """The flat numbers for metrics/analyze.json and MLflow."""
    rhos = [r["spearman"] for r in rows if r["spearman"] is not None]
    m = {"explain/images": len(rows), "explain/flagged": sum(r["flagged"] for r in rows),
         "explain/constant_maps": sum(r["note"] == "trained map constant" for r in rows)}
    if rhos:
        m.update({"explain/randomisation_spearman_mean": float(np.mean(rhos)),
                  "explain/randomisation_spearman_max": float(np.max(rhos))})
    m.update({f"explain/randomisation_spearman/image_{r['image']}": r["spearman"] for r in rows
              if r["spearman"] is not None})
    return m
