"""Datasets as plain arrays: synthetic shapes, the user's image folders, splits, statistics, augmentation.

Arrays, not Dataset classes: images are uint8 (N, H, W, 3); targets are uint8 masks (N, H, W) holding class
indices for segmentation, or int64 labels (N,) for classification.

    >>> images, masks, names = make_synthetic("segmentation", n=4, size=32, num_classes=2, seed=0)
    >>> images.shape, masks.shape, names
    ((4, 32, 32, 3), (4, 32, 32), ['background', 'shape'])
"""

import hashlib
import math
import warnings
from pathlib import Path

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "ring", "cross")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class DataError(ValueError):
    """Bad input data; the message names the file and the problem."""


# --- synthetic shapes ---------------------------------------------------------------------------------------

def _shape_mask(kind, yy, xx, cy, cx, r, angle):
    # Rotated coordinates centred on the shape, (H, W) each.
    u = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
    v = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
    d2 = u * u + v * v
    if kind == "circle":
        return d2 <= r * r
    if kind == "ring":
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind == "square":
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if kind == "cross":
        return ((np.abs(u) <= r) & (np.abs(v) <= 0.3 * r)) | ((np.abs(v) <= r) & (np.abs(u) <= 0.3 * r))
    if kind == "triangle":
        # Inside all three edges of an equilateral triangle with circumradius r (apothem r / 2).
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3
            inside &= u * math.cos(a) + v * math.sin(a) <= 0.5 * r
        return inside
    raise ValueError(f"unknown shape {kind!r}")


def _background(rng, size):
    # A random colour gradient plus noise and a few thin distractor lines: the model has to learn shapes,
    # not "anything that is not flat".
    yy, xx = np.mgrid[0:size, 0:size] / size
    c0, c1 = rng.uniform(0, 255, (2, 3))
    direction = rng.uniform(0, 2 * math.pi)
    t = (np.cos(direction) * xx + np.sin(direction) * yy + 1) / 2
    img = c0 + (c1 - c0) * t[..., None]
    for _ in range(rng.integers(0, 3)):
        y0 = rng.integers(0, size)
        img[y0:y0 + 1, :, :] = rng.uniform(0, 255, 3)
    return img + rng.normal(0, 12, img.shape)


def make_synthetic(task, n, size, num_classes, seed):
    """Seeded shapes on noisy gradients. Returns (images, targets, class_names).

    segmentation: 1-3 shapes per image; the mask holds 1 for every shape when num_classes == 2, else the
    shape kind (1..num_classes-1). classification: one shape per image, label = its kind, classes balanced.
    """
    kinds = num_classes - 1 if task == "segmentation" else num_classes
    if not 1 <= kinds <= len(SHAPES) or (task == "classification" and kinds < 2):
        lo, hi = (2, len(SHAPES) + 1) if task == "segmentation" else (2, len(SHAPES))
        raise DataError(f"synthetic {task} data supports prepare.num_classes from {lo} to {hi}, got {num_classes}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    images = np.empty((n, size, size, 3), np.uint8)
    targets = np.zeros((n, size, size), np.uint8) if task == "segmentation" else np.empty(n, np.int64)
    for i in range(n):
        img = _background(rng, size)
        count = rng.integers(1, 4) if task == "segmentation" else 1
        for _ in range(count):
            kind = rng.integers(0, len(SHAPES) if kinds == 1 else kinds) if task == "segmentation" else i % kinds
            # One shape per class image is drawn larger: its outline is the only cue to the label.
            r = rng.uniform(0.12, 0.25) * size if task == "segmentation" else rng.uniform(0.22, 0.38) * size
            cy, cx = rng.uniform(r, size - r, 2)
            m = _shape_mask(SHAPES[kind], yy, xx, cy, cx, r, rng.uniform(0, 2 * math.pi))
            # Hard but fair: a shape's colour stands at least 80/255 (RGB distance) from the background
            # under its centre; fainter shapes would make the labels arbitrary, not the task harder.
            colour = rng.uniform(0, 255, 3)
            while np.linalg.norm(colour - img[int(cy), int(cx)]) < 80:
                colour = rng.uniform(0, 255, 3)
            img[m] = colour + rng.normal(0, 12, (m.sum(), 3))
            if task == "segmentation":
                targets[i][m] = 1 if kinds == 1 else kind + 1
            else:
                targets[i] = kind
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    if task == "segmentation":
        names = ["background", "shape"] if kinds == 1 else ["background", *SHAPES[:kinds]]
    else:
        names = list(SHAPES[:kinds])
    return images, targets, names


# --- the user's image folders -------------------------------------------------------------------------------

def _image_files(folder):
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read(path, size, mode, max_pixels=None):
    from PIL import Image, UnidentifiedImageError

    default, limit = Image.MAX_IMAGE_PIXELS, max_pixels or Image.MAX_IMAGE_PIXELS
    bomb = (f"{path}: over prepare.max_image_pixels={limit} pixels (a guard against decompression bombs); raise "
            "prepare.max_image_pixels if the image is genuine, or shrink it")
    try:
        try:  # PIL's own guard, checked as it opens, at our limit: it warns above it and refuses at twice it
            Image.MAX_IMAGE_PIXELS = limit
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = default
        with im:
            if im.width * im.height > limit:
                raise DataError(f"{bomb} ({im.width}x{im.height})")
            im.load()
            original = im.size
            if mode == "image":
                im = im.convert("RGB")
                arr = np.asarray(im.resize((size, size), Image.BILINEAR))
            else:
                arr = np.asarray(im)
                if arr.ndim == 3:
                    if not (arr[..., :3] == arr[..., :1]).all():
                        raise DataError(f"{path}: a mask must be single-channel (class index per pixel), got a "
                                        f"colour image; save it as 8-bit grayscale or palette PNG")
                    arr = arr[..., 0]
                arr = np.asarray(Image.fromarray(arr.astype(np.uint8)).resize((size, size), Image.NEAREST))
    except Image.DecompressionBombError:
        raise DataError(bomb) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: cannot read image ({e}); replace or remove the file") from None
    return arr, original


def load_folder(task, raw_dir, size, num_classes, max_pixels=None):
    """Read data/raw. Returns (images, targets, class_names), resized to size x size.

    segmentation: raw_dir/images/<name>.<ext> with raw_dir/masks/<name>.png (class index per pixel; a
    binary mask may use 255 for foreground). classification: raw_dir/<class>/<image>, one folder per class.
    """
    raw = Path(raw_dir)
    if task == "segmentation":
        img_dir, mask_dir = raw / "images", raw / "masks"
        files = _image_files(img_dir) if img_dir.is_dir() else []
        if not files:
            raise DataError(f"{img_dir}: no images found; put images in {img_dir}/ and masks with the same "
                            f"names in {mask_dir}/, or set prepare.source: synthetic")
        masks = {p.stem: p for p in _image_files(mask_dir)} if mask_dir.is_dir() else {}
        orphans = sorted(set(masks) - {p.stem for p in files})
        if orphans:
            raise DataError(f"{masks[orphans[0]]}: mask has no image in {img_dir}/ "
                            f"({len(orphans)} such masks); add the image or remove the mask")
        images, targets = [], []
        for p in files:
            if p.stem not in masks:
                raise DataError(f"{p}: no mask {mask_dir / (p.stem + '.png')}; add it or remove the image")
            img, img_size = _read(p, size, "image", max_pixels)
            mask, mask_size = _read(masks[p.stem], size, "mask", max_pixels)
            if img_size != mask_size:
                raise DataError(f"{masks[p.stem]}: mask is {mask_size[0]}x{mask_size[1]} but its image {p.name} "
                                f"is {img_size[0]}x{img_size[1]}; they must be the same size")
            if num_classes == 2:
                mask = np.where(mask == 255, 1, mask)
            bad = np.unique(mask[mask >= num_classes])
            if bad.size:
                raise DataError(f"{masks[p.stem]}: mask values {bad.tolist()} out of range for "
                                f"prepare.num_classes={num_classes} (expected 0..{num_classes - 1}"
                                f"{' or 255' if num_classes == 2 else ''}); fix the mask or num_classes")
            images.append(img)
            targets.append(mask.astype(np.uint8))
        names = ["background", "foreground"] if num_classes == 2 else [f"class_{i}" for i in range(num_classes)]
        return np.stack(images), np.stack(targets), names

    class_dirs = sorted(d for d in raw.iterdir() if d.is_dir()) if raw.is_dir() else []
    if len(class_dirs) != num_classes:
        raise DataError(f"{raw}: found {len(class_dirs)} class folders {[d.name for d in class_dirs]} but "
                        f"prepare.num_classes={num_classes}; make one sub-folder per class or fix num_classes")
    images, targets = [], []
    for label, d in enumerate(class_dirs):
        files = _image_files(d)
        if not files:
            raise DataError(f"{d}: class folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for p in files:
            images.append(_read(p, size, "image", max_pixels)[0])
            targets.append(label)
    return np.stack(images), np.asarray(targets, np.int64), [d.name for d in class_dirs]


# --- splits and statistics ----------------------------------------------------------------------------------

def split_indices(n, val_fraction, test_fraction, seed):
    """Shuffled, disjoint train/val/test index arrays covering range(n); every split non-empty."""
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if min(n_val, n_test, n - n_val - n_test) < 1:
        need = math.ceil(1 / min(val_fraction, test_fraction)) if min(val_fraction, test_fraction) > 0 else "∞"
        raise DataError(f"{n} images are too few for val_fraction={val_fraction}, test_fraction={test_fraction}: "
                        f"a split would be empty; add images (at least {need}) or raise the fractions")
    order = np.random.default_rng(seed).permutation(n)
    return {"train": order[n_val + n_test:], "val": order[:n_val], "test": order[n_val:n_val + n_test]}


def channel_stats(images):
    """Per-channel mean and std of uint8 (N, H, W, 3) images, on the [0, 1] scale."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255
    return x.mean(0).tolist(), np.maximum(x.std(0), 1e-6).tolist()


def digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# --- tensors and augmentation -------------------------------------------------------------------------------

def load_split(path):
    with np.load(path) as z:
        images = torch.from_numpy(z["images"]).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8
        targets = torch.from_numpy(z["targets"]).long()  # (N, H, W) or (N,)
    return images, targets


def to_float(images):
    """uint8 (B, 3, H, W) -> float32 in [0, 1]; normalisation happens inside the model."""
    return images.float().div_(255)


def batches(images, targets, batch_size):
    """(float32 (B, 3, H, W) in [0, 1], targets) batches, in order, of uint8 images (N, 3, H, W) or of float
    images already in [0, 1] (adversarial or corrupted copies)."""
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        yield (to_float(x) if x.dtype == torch.uint8 else x), targets[i:i + batch_size]


def augment(x, y, cfg, generator):
    """Random flips, 90-degree rotations and brightness on a float batch x (B, 3, H, W) and, for
    segmentation, its masks y (B, H, W), drawn per sample from `generator`."""
    b = x.shape[0]
    seg = y.dim() == 3

    def per_sample(flag, fn):
        nonlocal x, y
        sel = torch.rand(b, generator=generator) < 0.5
        if flag and sel.any():
            x = torch.where(sel[:, None, None, None], fn(x), x)
            if seg:
                y = torch.where(sel[:, None, None], fn(y), y)

    per_sample(cfg.get("hflip"), lambda t: t.flip(-1))
    per_sample(cfg.get("vflip"), lambda t: t.flip(-2))
    if cfg.get("rot90") and x.shape[-1] == x.shape[-2]:
        k = torch.randint(0, 4, (b,), generator=generator)
        for turns in (1, 2, 3):
            sel = k == turns
            if sel.any():
                x[sel] = torch.rot90(x[sel], turns, (-2, -1))
                if seg:
                    y[sel] = torch.rot90(y[sel], turns, (-2, -1))
    if cfg.get("brightness"):
        scale = 1 + (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1) * cfg["brightness"]
        x = (x * scale).clamp_(0, 1)
    return x, y
