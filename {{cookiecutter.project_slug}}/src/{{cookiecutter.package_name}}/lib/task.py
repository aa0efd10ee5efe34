"""What depends on the task, for every stage: the primary metric, predictions from logits, per-sample counts
and the scores they add up to, the losses, and the one batched evaluation loop.

    >>> t = Task("classification", 2)
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])  # (B, C) classification logits
    >>> scores(t, reduce(sample_stats(logits, torch.tensor([0, 1, 1]), t)))
    {'accuracy': 0.6666666666666666}

Segmentation counts and scores come from segmentation_models_pytorch.metrics (get_stats, f1_score, iou_score),
imported when a segmentation batch is scored: segmentation stages have smp loaded already to build the model,
and classification stages never pay its import. Counts are kept per sample so that a bootstrap can resample
images and DDP can all-reduce their sums; scores are computed once, from the sum over the dataset.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from {{ cookiecutter.package_name }}.lib import names


def primary_metric(task_name):
    return "dice" if task_name == "segmentation" else "accuracy"


@dataclasses.dataclass(frozen=True)
class Task:
    """What a model predicts, passed as one value: the task's name and number of classes (background included)."""

    name: str  # segmentation | classification
    num_classes: int

    @classmethod
    def of(cls, info):
        """From dataset.json or a checkpoint's model_args (both carry "task" and "num_classes")."""
        return cls(info["task"], info["num_classes"])

    @property
    def metric(self):
        return primary_metric(self.name)

    @property
    def binary(self):
        # Binary segmentation predicts one foreground logit; everything else one per class.
        return self.name == "segmentation" and self.num_classes == 2

    @property
    def outputs(self):
        """Logits per pixel (segmentation) or per image (classification)."""
        return 1 if self.binary else self.num_classes


def predict(logits, t):
    """Class indices: (B, H, W) for segmentation, (B,) for classification."""
    if t.binary:
        return (logits[:, 0] > 0).long()
    return logits.argmax(1)


def sample_stats(logits, y, t):
    """Counts per sample: `correct` / `total` (B,) and, for segmentation, per foreground class tp / fp / fn / tn
    (B, K). They add up over samples and batches (`reduce`); `scores` turns a sum into metrics."""
    pred = predict(logits, t)
    b = y.shape[0]
    stats = {"correct": (pred == y).reshape(b, -1).sum(1).double(),
             "total": torch.full((b,), y[0].numel(), dtype=torch.float64, device=y.device)}
    if t.name == "segmentation":
        from segmentation_models_pytorch.metrics import get_stats

        counts = get_stats(pred, y, mode="multiclass", num_classes=t.num_classes)  # 4 x (B, C), C with background
        stats.update({k: v[:, 1:].double() for k, v in zip(("tp", "fp", "fn", "tn"), counts, strict=True)})
    return stats


def concat(rows):
    """One dict of per-sample counts from a list of them (batches in order)."""
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def reduce(stats):
    """Per-sample counts -> dataset counts (sum over samples)."""
    return {k: v.sum(0) for k, v in stats.items()}


def scores(t, totals):
    """Metrics from dataset counts. Segmentation: Dice (F1) and IoU per foreground class over all pixels of the
    dataset, then their mean over classes (smp's "macro" reduction); a class absent from both prediction and
    truth scores 1."""
    accuracy = (totals["correct"] / totals["total"]).item()
    if t.name == "classification":
        return {"accuracy": accuracy}
    from segmentation_models_pytorch.metrics import f1_score, iou_score

    counts = {k: totals[k].reshape(1, -1) for k in ("tp", "fp", "fn", "tn")}  # the dataset as one "image"
    return {"dice": f1_score(**counts, reduction="macro", zero_division=1.0).item(),
            "iou": iou_score(**counts, reduction="macro", zero_division=1.0).item(),
            "pixel_accuracy": accuracy}


def cross_entropy(logits, y, t):
    """Binary cross-entropy on the foreground logit for binary segmentation, else cross-entropy: the `bce` part
    of the segmentation losses and the loss adversarial attacks climb. logits (B, 1 or C, ...), y class indices."""
    if t.binary:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float())
    return F.cross_entropy(logits, y)


def make_loss(t, name, label_smoothing=0.0):
    """loss(logits, targets) by params.yaml's train.loss name."""
    valid = names.LOSSES[t.name]
    if name not in valid:
        raise ValueError(f"train.loss={name!r}: valid {t.name} losses: {', '.join(valid)}")
    if t.name == "classification":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    from segmentation_models_pytorch import losses  # imported here for the reason in models.py

    mode = "binary" if t.binary else "multiclass"
    parts = {"dice": losses.DiceLoss(mode, from_logits=True), "focal": losses.FocalLoss(mode),
             "bce": lambda logits, y: cross_entropy(logits, y, t)}
    chosen = [parts[n] for n in (("dice", "bce") if name == "dice_bce" else (name,))]
    return lambda logits, y: sum(fn(logits, y) for fn in chosen)


def score_batches(fn, batches, t, loss_fn=None, keep_predictions=False):
    """The evaluation loop of every stage: fn(x) -> logits over (x, y) batches, x float32 (B, 3, H, W) in
    [0, 1]. Returns {"stats": per-sample counts, "loss": mean loss (with loss_fn), "predictions": class indices
    (with keep_predictions)}. fn is a model in eval mode or any callable (an ONNX Runtime session)."""
    rows, preds, total, n = [], [], 0.0, 0
    with torch.inference_mode():
        for x, y in batches:
            logits = fn(x).float()
            if loss_fn is not None:
                total += loss_fn(logits, y).item() * len(x)
            n += len(x)
            rows.append(sample_stats(logits, y, t))
            if keep_predictions:
                preds.append(predict(logits, t).cpu())
    out = {"stats": concat(rows)}
    if loss_fn is not None:
        out["loss"] = total / n
    if keep_predictions:
        out["predictions"] = torch.cat(preds)
    return out
