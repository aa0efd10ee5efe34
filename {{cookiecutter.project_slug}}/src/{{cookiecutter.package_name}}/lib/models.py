"""Model constructors by name, and checkpoints that carry their constructor arguments.

    >>> model = build_model(task="segmentation", architecture="Unet", encoder="resnet18", num_classes=2,
    ...                     mean=[0.5] * 3, std=[0.25] * 3)
    >>> model(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2, 1, 64, 64])

Every model takes float images in [0, 1], (B, 3, H, W): normalisation with the train split's statistics is
part of the model, so exported and served models, attacks and corruptions all work in pixel space.
"""

import functools
import json

import numpy as np
import safetensors.torch
import torch
from torch import nn

from {{ cookiecutter.package_name }}.lib import names
from {{ cookiecutter.package_name }}.lib.task import Task


# The model libraries are imported when a model is built, not with this module: smp pulls in timm and
# torchvision (~4 s here, `python -X importtime`), which stages that never build a segmentation model
# (prepare, register, compare, every classification stage) should not pay.
def _smp(architecture, **kwargs):
    try:
        import segmentation_models_pytorch as smp
    except ModuleNotFoundError as e:  # a classification project does not lock it
        raise ModuleNotFoundError("segmentation needs segmentation-models-pytorch, which this project does not "
                                  "lock: uv add segmentation-models-pytorch") from e

    return getattr(smp, architecture)(**kwargs)


def _torchvision(name, **kwargs):
    import torchvision

    return torchvision.models.get_model(name, **kwargs)


SEGMENTATION = {name: functools.partial(_smp, name) for name in names.SEGMENTATION_ARCHITECTURES}
ENCODERS = names.ENCODERS
CLASSIFICATION = {name: functools.partial(_torchvision, name) for name in names.CLASSIFICATION_ARCHITECTURES}


class Normalized(nn.Module):
    def __init__(self, net, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):  # (B, 3, H, W) in [0, 1]
        return self.net((x - self.mean) / self.std)


def _lookup(table, name, key):
    if name not in table:
        raise ValueError(f"{key}={name!r} is not available; valid names: {', '.join(table)}")
    return table[name]


def _replace_head(net, num_classes):
    # Pretrained torchvision classifiers end in a 1000-way Linear under different names (fc, classifier[-1],
    # ...): swap the last Linear for one with num_classes outputs.
    name, last = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], nn.Linear(last.in_features, num_classes))


def build_model(task, architecture, encoder, num_classes, mean, std, pretrained=False):
    """The network wrapped with its input normalisation. pretrained=True uses the libraries' own weight
    download (smp: Hugging Face Hub; torchvision: download.pytorch.org), cached after the first time."""
    out = Task(task, num_classes).outputs
    if task == "segmentation":
        cls = _lookup(SEGMENTATION, architecture, "train.model.architecture")
        _lookup(dict.fromkeys(ENCODERS), encoder, "train.model.encoder")
    else:
        fn = _lookup(CLASSIFICATION, architecture, "train.model.architecture")
    try:
        if task == "segmentation":
            net = cls(encoder_name=encoder, encoder_weights="imagenet" if pretrained else None, classes=out)
        elif pretrained:
            net = fn(weights="DEFAULT")
            _replace_head(net, out)
        else:
            net = fn(weights=None, num_classes=out)
    except Exception as e:  # network, cache and hub errors all surface here
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not load pretrained weights for {architecture}/{encoder}: {type(e).__name__}: {e}. They are "
            "downloaded once into the torch / Hugging Face cache; without network set train.model.pretrained: "
            "false") from e
    return Normalized(net, mean, std)


def for_data(cfg, info):
    """(model, constructor arguments) from params' train.model section and the prepared data's description
    (task, classes, normalisation, image size), checked against that size."""
    model_args = {"task": info["task"], "architecture": cfg["architecture"], "num_classes": info["num_classes"],
                  "encoder": cfg["encoder"] if info["task"] == "segmentation" else None,
                  "mean": info["mean"], "std": info["std"]}
    model = build_model(**model_args, pretrained=cfg["pretrained"])
    check_input_size(model, info["image_size"], f"{model_args['architecture']}/{model_args['encoder']}")
    return model, model_args


def check_input_size(model, size, name):
    """Fail early, and clearly, for architectures that cannot take size x size inputs (PAN at 64, ...)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, 3, size, size))
    except RuntimeError as e:
        raise ValueError(f"{name} cannot take {size}x{size} inputs ({e}); set prepare.image_size to a multiple "
                         "of 32 that is at least 128, or choose another architecture") from None
    finally:
        model.train(was_training)


def validate_input(x, input_shape):
    """The gate in front of inference: float32 (B, C, H, W) images in [0, 1], finite, at the trained size.
    Takes a torch.Tensor or a numpy array (what a served model receives); returns x unchanged, or raises
    ValueError naming the rule broken and the fix."""
    if isinstance(x, np.ndarray):
        dtype, expected, finite = x.dtype, np.float32, np.isfinite
    elif isinstance(x, torch.Tensor):
        dtype, expected, finite = x.dtype, torch.float32, torch.isfinite
    else:
        raise ValueError(f"input is a {type(x).__name__}: expected a torch.Tensor or numpy.ndarray")
    if dtype != expected:
        raise ValueError(f"input dtype {dtype}: expected float32 (uint8 images: convert to float32, then / 255)")
    if x.ndim != 4 or list(x.shape[1:]) != list(input_shape) or x.shape[0] == 0:
        raise ValueError(f"input shape {tuple(x.shape)}: expected (B, {', '.join(map(str, input_shape))}) "
                         "with B >= 1")
    if not finite(x).all():
        raise ValueError("input contains NaN or infinite values: expected finite values in [0, 1]")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"input values span [{float(x.min()):.3g}, {float(x.max()):.3g}]: expected [0, 1] "
                         "(uint8 images: / 255)")
    return x


def parameter_count(model):
    return sum(t.numel() for t in model.parameters())


def save_checkpoint(path, model, model_args, **info):
    """Weights plus, as JSON metadata, the constructor arguments and any `info` (e.g. input_shape)."""
    meta = {"model_args": model_args, **info}
    safetensors.torch.save_model(model, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})


def checkpoint_info(path):
    """The metadata saved with the weights: {"model_args": {...}, "input_shape": [3, H, W], ...}."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        return {k: json.loads(v) for k, v in f.metadata().items()}


def load_checkpoint(path):
    """Rebuild the model from the arguments stored in the file, then load its weights (no pickle)."""
    model_args = checkpoint_info(path)["model_args"]
    model = build_model(**model_args)
    safetensors.torch.load_model(model, str(path))
    return model.eval(), model_args
