"""prepare's side of the data: synthetic shapes or the user's image folders, decoded in parallel and streamed
to disk as splits, with their statistics. The later stages read the splits through dataset.py.

A prepared split is a folder of two .npy files (paths.split, paths.SPLIT_FILES): images.npy, uint8 (N, H, W, 3),
and targets.npy, uint8 masks (N, H, W) holding class indices for segmentation or int64 labels (N,) for
classification, written row by row: memory holds one image, whatever the number of images.

    >>> images, masks, names = make_synthetic("segmentation", n=4, size=32, num_classes=2, seed=0)
    >>> images.shape, masks.shape, names
    ((4, 32, 32, 3), (4, 32, 32), ['background', 'shape'])
"""

import contextlib
import functools
import hashlib
import math
import multiprocessing
import os
import signal
import sys
from pathlib import Path

import numpy as np

from {{ cookiecutter.package_name }}.lib import decoding, paths

SHAPES = ("circle", "square", "triangle", "ring", "cross")
SYNTHETIC_CLASSES = {"segmentation": 2, "classification": 3}  # num_classes: auto: binary masks; three shapes

DataError = decoding.DataError  # bad input data; the message names the file and the problem


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

def folder_items(task, raw_dir, num_classes):
    """What data/raw holds, checked, before any pixel is decoded. Returns (items, class_names, num_classes):
    items are (image path, mask path) for segmentation, (image path, label) for classification. Hidden files
    and folders (a leading '.', e.g. .ipynb_checkpoints) are ignored. num_classes "auto": the number of class
    folders; for segmentation, resolved from the masks' values by `mask_classes`."""
    raw = Path(raw_dir)
    if task == "segmentation":
        img_dir, mask_dir = raw / "images", raw / "masks"
        files = decoding.image_files(img_dir) if img_dir.is_dir() else []
        if not files:
            raise DataError(f"{img_dir}: no images found; put images in {img_dir}/ and masks with the same "
                            f"names in {mask_dir}/, or set prepare.source: synthetic")
        _by_stem(files, "images")
        masks = _by_stem(decoding.image_files(mask_dir) if mask_dir.is_dir() else [], "masks")
        orphans = sorted(set(masks) - {p.stem for p in files})
        if orphans:
            raise DataError(f"{masks[orphans[0]]}: mask has no image in {img_dir}/ "
                            f"({len(orphans)} such masks); add the image or remove the mask")
        for p in files:
            if p.stem not in masks:
                raise DataError(f"{p}: no mask {mask_dir / (p.stem + '.png')}; add it or remove the image")
        return [(p, masks[p.stem]) for p in files], None, num_classes
    class_dirs = sorted(d for d in raw.iterdir() if d.is_dir() and not d.name.startswith(".")) if raw.is_dir() else []
    if num_classes == "auto":
        if len(class_dirs) < 2:
            raise DataError(f"{raw}: prepare.num_classes: auto found {len(class_dirs)} class folders "
                            f"{[d.name for d in class_dirs]}; make one sub-folder per class (at least 2)")
        num_classes = len(class_dirs)
    if len(class_dirs) != num_classes:
        raise DataError(f"{raw}: found {len(class_dirs)} class folders {[d.name for d in class_dirs]} but "
                        f"prepare.num_classes={num_classes}; make one sub-folder per class or set num_classes "
                        "(or auto)")
    items = []
    for label, d in enumerate(class_dirs):
        files = decoding.image_files(d)
        if not files:
            raise DataError(f"{d}: class folder has no images ({', '.join(decoding.SUFFIXES)}, any case)")
        items += [(p, label) for p in files]
    return items, [d.name for d in class_dirs], num_classes


def _by_stem(paths, kind):
    """{stem: path}; two files of one stem (img5.png and img5.JPG) are refused before any is decoded: images and
    masks pair by stem, so two images would silently share one mask, and of two masks one would be dropped."""
    by_stem = {}
    for p in paths:
        if p.stem in by_stem:
            raise DataError(f"{by_stem[p.stem]} and {p}: two {kind} named {p.stem} (images and masks pair by the "
                            "name without its suffix, so they cannot be told apart); rename or remove one")
        by_stem[p.stem] = p
    return by_stem


def _mask_values(path, max_pixels=None):
    return np.unique(decoding.read(path, "mask", max_pixels=max_pixels)[0])


def mask_classes(mask_paths, pool=None, max_pixels=None):
    """prepare.num_classes: auto for segmentation: 2 when the masks hold only 0, 1 and 255 (binary, 255 =
    foreground), else the largest value + 1 (255 cannot then be a class: its value is refused)."""
    values = set()
    read = functools.partial(_mask_values, max_pixels=max_pixels)  # picklable, for the pool's workers
    for v in (pool.imap(read, mask_paths, chunksize=16) if pool else map(read, mask_paths)):
        values.update(v.tolist())
    if values <= {0, 1, 255}:
        return 2
    if 255 in values:
        raise DataError(f"prepare.num_classes: auto found mask values {sorted(values)[:12]}...: 255 is the "
                        "binary foreground, not one class among many; relabel the masks 0..K-1 or give num_classes")
    return max(values) + 1


def decode_item(item, task, size, resize, window, num_classes, max_pixels=None):
    """One folder item -> (uint8 image (size, size, 3), target, original (width, height)). Runs in a worker."""
    path, target = item
    image, original = decoding.load(path, size, resize, "image", window, max_pixels)
    if task == "classification":
        return image, target, original
    mask, mask_size = decoding.load(target, size, resize, "mask", max_pixels=max_pixels)
    if original != mask_size:
        raise DataError(f"{target}: mask is {mask_size[0]}x{mask_size[1]} but its image {path.name} is "
                        f"{original[0]}x{original[1]} (after EXIF orientation); they must be the same size")
    if num_classes == 2:
        mask = np.where(mask == 255, 1, mask).astype(np.uint8)
    bad = np.unique(mask[mask >= num_classes])
    if bad.size:
        raise DataError(f"{target}: mask values {bad.tolist()} out of range for prepare.num_classes={num_classes} "
                        f"(expected 0..{num_classes - 1}{' or 255' if num_classes == 2 else ''}); fix the mask "
                        "or set num_classes (auto: from the mask values)")
    return image, mask, original


class _Decode:
    # A picklable callable for the pool: decode_item with prepare's settings bound.
    def __init__(self, **settings):
        self.settings = settings

    def __call__(self, item):
        return decode_item(item, **self.settings)


def pool(workers):
    """A context giving a process pool for decoding, or None for workers == 1. fork on Linux (nothing to
    re-import), spawn elsewhere. Results come back in input order (imap), so the bytes written never depend
    on `workers`."""
    if workers == 1:
        return contextlib.nullcontext()
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    return context.Pool(workers, initializer=_quiet_worker)


def _quiet_worker():
    # Forked workers inherit the stage's signal handlers, which raise; the pool ends its workers with SIGTERM
    # (also when prepare stops on a bad file), and each would print a traceback under the one-line error.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def resolve_workers(workers):
    """prepare.workers: null = every core this process may use."""
    if workers:
        return workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decoded(items, workers_pool, **settings):
    """(image, target, original size) for each item, in order, decoded by the pool's workers."""
    fn = _Decode(**settings)
    # Small chunks keep every worker busy and bound what waits in the result queue.
    return workers_pool.imap(fn, items, chunksize=4) if workers_pool else map(fn, items)


# --- streaming writes and statistics (the split itself: splits.py) -----------------------------------------

def _npy_writer(path, dtype, shape):
    """An open .npy file with its header written; the caller appends the rows' bytes in order."""
    f = open(path, "wb")  # noqa: SIM115 (closed by write_split)
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                             "fortran_order": False, "shape": tuple(shape)})
    return f


def write_split(folder, rows, n, size, task, num_classes):
    """Stream n (image, target, ...) rows into folder/images.npy and folder/targets.npy, one row at a time:
    memory holds one image, whatever n. Returns the split's running sums: per-channel sum and sum of squares
    of the uint8 pixels (exact integers) and the count of each class."""
    folder.mkdir(parents=True, exist_ok=True)
    seg = task == "segmentation"
    target_dtype, target_shape = (np.uint8, (n, size, size)) if seg else (np.int64, (n,))
    sums, counts = np.zeros((2, 3), np.int64), np.zeros(num_classes, np.int64)
    written = 0
    with _npy_writer(folder / paths.SPLIT_FILES[0], np.uint8, (n, size, size, 3)) as fi, \
            _npy_writer(folder / paths.SPLIT_FILES[1], target_dtype, target_shape) as ft:
        for image, target, *_ in rows:
            pixels = image.reshape(-1, 3).astype(np.int64)
            sums += np.stack([pixels.sum(0), (pixels * pixels).sum(0)])
            counts += np.bincount(np.ravel(target), minlength=num_classes)[:num_classes]
            fi.write(np.ascontiguousarray(image, np.uint8).tobytes())
            ft.write(np.asarray(target, target_dtype).tobytes())
            written += 1
    if written != n:
        raise RuntimeError(f"{folder}: wrote {written} rows, expected {n}")
    return {"sums": sums, "counts": counts, "pixels": n * size * size}


def channel_stats_from(sums, pixels):
    """Per-channel mean and std on the [0, 1] scale from exact sums (write_split) over `pixels` pixels."""
    mean = sums[0] / pixels / 255
    var = np.maximum(sums[1] / pixels / 255**2 - mean**2, 0)
    return mean.tolist(), np.maximum(np.sqrt(var), 1e-6).tolist()


def channel_stats(images):
    """Per-channel mean and std of uint8 (N, H, W, 3) images, on the [0, 1] scale."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.int64)
    return channel_stats_from(np.stack([pixels.sum(0), (pixels * pixels).sum(0)]), len(pixels))


def digest(sources):
    """sha256 over the bytes of the given files, in order, read in 1 MiB chunks."""
    h = hashlib.sha256()
    for path in sources:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
