"""How a file becomes pixels: the decoding rules of prepare and predict, written once (data/raw/README.md
lists them for users).

Images come out as uint8 RGB (H, W, 3), masks as class indices (H, W):

- every PIL mode: 1, L, LA, P, RGB, RGBA, CMYK, YCbCr, I;16 (16-bit), I (32-bit), F (float); alpha is dropped;
- more than 8 bits: the full range of the type maps onto 0..255 (16-bit 0..65535, so an 8-bit image x 257 loads
  identical to the 8-bit one; float 0..1), or the file's own range `window` = [lo, hi] (scanners that use 12 of
  16 bits: [0, 4095]);
- the EXIF orientation tag is applied, to images and masks alike (a phone photo loads upright);
- masks: palette (P) indices, grayscale values, or a colour image whose channels are equal; 16-bit masks hold
  indices up to 255;
- then `fit` to size x size: stretch, pad (letterbox: keep aspect, pad with 0 = black, background class), or
  crop (keep aspect, centre crop).

    >>> fit(np.zeros((20, 40, 3), np.uint8), 10, "pad").shape, geometry(40, 20, 10, "pad")
    ((10, 10, 3), (10, 5, 0, 2))

Only numpy and PIL: parallel decoding workers import nothing else of the project.
"""

import numpy as np

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
RESIZE = ("pad", "crop", "stretch")
# Mean absolute difference, in 0..255 levels, between a JPEG decoded at the size used (draft) and decoded whole,
# each then fitted: the bound tests/test_decoding.py holds `load` to on photograph-like JPEGs (the worst seen
# there is 2.8, a 333 x 517 image padded to 128; at 32-64 px, 0.7-1.2).
DRAFT_TOLERANCE = 3.0
# The full range of each mode with more than 8 bits per channel (window: null).
FULL_RANGE = {"I;16": (0, 65535), "I;16B": (0, 65535), "I;16L": (0, 65535), "I;16N": (0, 65535),
              "I": (0, 65535), "F": (0.0, 1.0)}


class DataError(ValueError):
    """A file that cannot be read as an image or mask; the message names it and the fix."""


def is_image(path):
    """An image file a user folder may hold: a known suffix in any case, not hidden (.ipynb_checkpoints...)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in SUFFIXES


def image_files(folder):
    return sorted(p for p in folder.iterdir() if is_image(p))


def to_uint8(arr, lo, hi):
    """Values in [lo, hi] -> 0..255 (rounded, clipped), for images with more than 8 bits.

    >>> to_uint8(np.array([0, 257, 65535]), 0, 65535).tolist()
    [0, 1, 255]
    """
    if hi <= lo:
        raise DataError(f"window [{lo}, {hi}]: need lo < hi")
    scaled = (arr.astype(np.float64) - lo) * (255 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _rgb(im, window):
    if im.mode in FULL_RANGE:  # one channel of more than 8 bits
        lo, hi = window or FULL_RANGE[im.mode]
        gray = to_uint8(np.asarray(im), lo, hi)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # the palette's transparency is dropped with the alpha channel below
    return np.asarray(im.convert("RGB"))  # 1, L, LA, P, RGBA (alpha dropped), CMYK, YCbCr, ...


def _mask(im, path):
    arr = np.asarray(im)
    if arr.ndim == 3:
        if not (arr[..., :3] == arr[..., :1]).all():
            raise DataError(f"{path}: a mask must be single-channel (class index per pixel), got a colour "
                              f"image; save it as 8-bit grayscale or palette PNG")
        arr = arr[..., 0]
    if arr.dtype == bool:  # mode 1
        arr = arr.astype(np.uint8)
    if arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 255 or (arr != np.rint(arr)).any():
            raise DataError(f"{path}: mask values must be whole class indices 0..255, got "
                              f"{arr.min()}..{arr.max()}; save the mask as 8-bit grayscale or palette PNG")
        arr = arr.astype(np.uint8)
    return arr


def read(path, kind="image", window=None, max_pixels=None, fit_to=None):
    """(uint8 (H, W, 3) RGB image or (H, W) mask, upright by its EXIF tag; its (width, height)). An image over
    max_pixels (a guard against decompression bombs; default PIL's) is refused, naming the param. With
    fit_to=(size, mode), a JPEG image is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that is still twice
    what `fit` makes of it (JPEG draft mode: a fraction of the cost); the size returned is the file's."""
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    default, limit = Image.MAX_IMAGE_PIXELS, max_pixels or Image.MAX_IMAGE_PIXELS
    bomb = (f"{path}: over prepare.max_image_pixels={limit} pixels (a guard against decompression bombs); raise "
            "prepare.max_image_pixels if the image is genuine, or shrink it")
    try:
        try:  # PIL's own guard, checked as it opens, at our limit: it warns above it and refuses at twice it
            Image.MAX_IMAGE_PIXELS = limit
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                opened = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = default
        with opened as im:
            if im.width * im.height > limit:
                raise DataError(f"{bomb} ({im.width}x{im.height})")
            raw = im.size
            if fit_to and kind == "image" and im.format == "JPEG":
                # geometry's scale is symmetric in width and height, so its size in the file's own orientation
                # is what the upright image needs, turned. Twice that, as Pillow's thumbnail does
                # (reducing_gap=2): the antialiased resize after the DCT scaling still has pixels to average.
                w, h, _, _ = geometry(im.width, im.height, *fit_to)
                im.draft(None, (2 * w, 2 * h))
            im.load()
            loaded, im = im.size, ImageOps.exif_transpose(im)
            original = raw[::-1] if im.size != loaded else raw  # turned by 90° (EXIF orientations 5-8)
            arr = _rgb(im, window) if kind == "image" else _mask(im, path)
    except Image.DecompressionBombError:
        raise DataError(bomb) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: cannot read image ({e}); replace or remove the file") from None
    return arr, original


def geometry(width, height, size, mode):
    """Where a width x height image lands in the size x size square: (scaled width, scaled height, left, top).
    left / top are negative when crop cuts the image."""
    if mode == "stretch":
        return size, size, 0, 0
    scale = (min if mode == "pad" else max)(size / width, size / height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return w, h, (size - w) // 2, (size - h) // 2


def fit(arr, size, mode, kind="image"):
    """uint8 (H, W, 3) image or (H, W) mask -> size x size by `mode` (stretch | pad | crop). Images are
    resampled bilinearly (antialiased when shrinking), masks by nearest neighbour; padding is 0."""
    from PIL import Image

    if mode not in RESIZE:
        raise DataError(f"prepare.resize={mode!r}: valid: {', '.join(RESIZE)}")
    w, h, left, top = geometry(arr.shape[1], arr.shape[0], size, mode)
    resample = Image.BILINEAR if kind == "image" else Image.NEAREST
    scaled = np.asarray(Image.fromarray(arr).resize((w, h), resample))
    out = np.zeros((size, size, *arr.shape[2:]), np.uint8)
    _paste(out, scaled, left, top)
    return out


def _paste(dst, src, left, top):
    """dst[top:top+h, left:left+w] = src, keeping only the overlap (offsets may be negative)."""
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + src.shape[0], dst.shape[0]), min(left + src.shape[1], dst.shape[1])
    dst[y0:y1, x0:x1] = src[y0 - top:y1 - top, x0 - left:x1 - left]


def unfit(mask, width, height, mode):
    """A size x size class-index mask back onto the original width x height image (nearest neighbour): the
    inverse of `fit`. With crop, the parts of the image the model never saw are 0 (background)."""
    from PIL import Image

    size = mask.shape[0]
    w, h, left, top = geometry(width, height, size, mode)
    scaled = np.zeros((h, w), np.uint8)
    _paste(scaled, mask, -left, -top)
    return np.asarray(Image.fromarray(scaled).resize((width, height), Image.NEAREST))


def load(path, size, mode, kind="image", window=None, max_pixels=None):
    """read + fit: (uint8 size x size image or mask, original (width, height)). JPEG images are decoded at the
    size used (`read`'s fit_to): within DRAFT_TOLERANCE of decoding them whole (tests/test_decoding.py)."""
    arr, original = read(path, kind, window, max_pixels, fit_to=(size, mode))
    return fit(arr, size, mode, kind), original
