"""Every figure the project draws, as PNG files: training curves, sample predictions, the optimisation variants'
latency vs quality, the robustness curve, explanation maps, and compare's runs. Each takes plain values and a path.

matplotlib's object API (Figure, not pyplot): no global backend or figure state, no display needed (CI,
servers, DVC queue workers).
"""

import numpy as np
from matplotlib.figure import Figure


def subplots(*grid, figsize, **kwargs):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def curves(history, metric, path):
    epochs = [r["epoch"] for r in history]
    fig, axes = subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", metric), strict=True):
        for split in ("train", "val"):
            ax.plot(epochs, [r[f"{split}/{key}"] for r in history], marker="o", label=split)
        ax.set(xlabel="epoch", ylabel=key, title=key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def predictions(images, targets, preds, task, class_names, path):
    """Segmentation: image / truth / prediction overlays per row. Classification: a grid of labelled images."""
    n = len(images)
    if task == "segmentation":
        fig, axes = subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
        for row, img, truth, pred in zip(axes, images, targets, preds, strict=True):
            panels = (("image", None), ("truth", truth), ("prediction", pred))
            for ax, (title, mask) in zip(row, panels, strict=True):
                ax.imshow(img.permute(1, 2, 0).numpy())
                if mask is not None:  # classes as solid colours over the image, background left clear
                    ax.imshow(np.ma.masked_equal(mask.numpy(), 0), cmap="cool", alpha=0.7, vmin=1,
                              vmax=max(len(class_names) - 1, 1), interpolation="nearest")
                ax.set_title(title if row is axes[0] else "")
                ax.axis("off")
    else:
        cols = min(n, 6)
        fig, axes = subplots((n + cols - 1) // cols, cols, figsize=(2 * cols, 2.2 * ((n + cols - 1) // cols)),
                                 squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, img, t, p in zip(axes.flat, images, targets, preds, strict=False):
            ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_title(f"{class_names[p]}\n(true: {class_names[t]})", fontsize=8,
                         color="green" if p == t else "red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def explanations(images, targets, preds, maps, notes, task, class_names, path, title=""):
    """One row per image, labelled columns: input, truth, prediction, then each of `maps` ({column title:
    (B, H, W) maps in [0, 1]}) over the image; a map's per-image note (`notes`: {title: [str]}) goes under it."""
    columns = ["input", "truth", "prediction", *maps]
    n = len(images)
    fig, axes = subplots(n, len(columns), figsize=(2.2 * len(columns), 2.3 * n + 0.4), squeeze=False)
    for i, row in enumerate(axes):
        img = images[i].permute(1, 2, 0).numpy()  # (H, W, 3)
        for ax, column in zip(row, columns, strict=True):
            ax.imshow(img)
            ax.axis("off")
            if task == "segmentation" and column in ("truth", "prediction"):
                mask = (targets if column == "truth" else preds)[i].numpy()
                ax.imshow(np.ma.masked_equal(mask, 0), cmap="cool", alpha=0.7, vmin=1,
                          vmax=max(len(class_names) - 1, 1), interpolation="nearest")
            elif column in ("truth", "prediction"):
                label = class_names[int((targets if column == "truth" else preds)[i])]
                ax.text(0.5, -0.08, label, transform=ax.transAxes, ha="center", va="top", fontsize=8)
            elif column in maps:
                ax.imshow(maps[column][i].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
                if column in notes:
                    ax.text(0.5, -0.08, notes[column][i], transform=ax.transAxes, ha="center", va="top", fontsize=8)
            if i == 0:
                ax.set_title(column, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def pareto(table, metric, path):
    fig, ax = subplots(figsize=(6, 4))
    for name, v in table.items():
        ax.scatter(v["latency_batch_1"]["p50_ms"], v[metric], s=30 + 4 * v["size_mb"])
        ax.annotate(f"{name} ({v['size_mb']:.1f} MB)", (v["latency_batch_1"]["p50_ms"], v[metric]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="batch-1 latency p50 (ms)", ylabel=f"test {metric}", title="Variants: latency vs quality")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def attack_curve(rows, metric, path):
    fig, ax = subplots(figsize=(6, 4))
    for key in [k for k in rows[0] if k != "epsilon"]:
        ax.plot([r["epsilon"] for r in rows], [r[key] for r in rows], marker="o", label=key)
    ax.set(xlabel="epsilon (x 1/255, l-inf)", ylabel=metric, title=f"{metric} under attack")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def runs(rows, path):
    quality = next((k for k in rows[0] if k.startswith("test ")), None) if rows else None
    fig, ax = subplots(figsize=(7, 4.5))
    for r in rows:
        if r.get(quality, "") != "" and r["fp32 b1 p50 ms"] != "":
            ax.scatter(r["fp32 b1 p50 ms"], r[quality], s=20 + (r["params"] or 0) / 2e5)
            ax.annotate(f"{r['architecture']}/{r['encoder']} {r['run'][-15:]}", (r["fp32 b1 p50 ms"], r[quality]),
                        fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="fp32 batch-1 latency p50 (ms)", ylabel=quality or "quality",
           title="Runs: latency vs quality (marker area ~ parameters)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def panels(pictures, path, title=None):
    """One row of labelled uint8 (H, W, 3) pictures: [(label, picture)]; challenge's disagreements."""
    fig, axes = subplots(1, len(pictures), figsize=(2.6 * len(pictures), 2.9), squeeze=False)
    for ax, (label, picture) in zip(axes[0], pictures, strict=True):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
