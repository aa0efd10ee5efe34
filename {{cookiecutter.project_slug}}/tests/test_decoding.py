import numpy as np
import pytest
from PIL import Image

from {{ cookiecutter.package_name }}.lib import decoding

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)  # (H, W, 3), not square: orientation shows
GRAY = RNG.integers(0, 256, (6, 10), dtype=np.uint8)


def _save(tmp_path, name, im, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


@pytest.mark.parametrize("mode,expected", [
    ("RGB", RGB), ("RGBA", RGB), ("L", np.repeat(GRAY[..., None], 3, 2)), ("LA", np.repeat(GRAY[..., None], 3, 2)),
    ("1", np.repeat((GRAY >= 128)[..., None] * np.uint8(255), 3, 2)),
])
def test_every_8_bit_mode_reads_as_its_rgb_pixels(tmp_path, mode, expected):
    source = Image.fromarray(RGB if mode.startswith("RGB") else GRAY)
    if mode == "1":
        source = source.point(lambda v: 255 if v >= 128 else 0).convert("1")
    path = _save(tmp_path, f"x.{mode}.png", source.convert(mode))
    arr, size = decoding.read(path)
    assert size == (10, 6) and arr.dtype == np.uint8 and np.array_equal(arr, expected)


def test_palette_and_cmyk_read_as_rgb(tmp_path):
    pal = Image.fromarray(RGB).quantize(16)  # P mode: the palette's colours come back
    arr, _ = decoding.read(_save(tmp_path, "p.png", pal))
    assert np.array_equal(arr, np.asarray(pal.convert("RGB")))
    cmyk = Image.fromarray(RGB).convert("CMYK")
    arr, _ = decoding.read(_save(tmp_path, "c.tif", cmyk))
    assert np.array_equal(arr, np.asarray(cmyk.convert("RGB")))


def test_16_bit_uses_its_full_range_and_equals_its_8_bit_twin(tmp_path):
    path = _save(tmp_path, "g16.png", Image.fromarray(GRAY.astype(np.uint16) * 257))
    assert Image.open(path).mode == "I;16"
    arr, _ = decoding.read(path)
    assert np.array_equal(arr[..., 0], GRAY)  # not clipped to white as convert("RGB") does


def test_16_bit_gradient_maps_monotonically_onto_0_255(tmp_path):
    ramp = np.linspace(0, 65535, 4096).astype(np.uint16).reshape(64, 64)
    arr, _ = decoding.read(_save(tmp_path, "ramp.tif", Image.fromarray(ramp)))
    flat = arr[..., 0].ravel()
    assert flat[0] == 0 and flat[-1] == 255 and (np.diff(flat.astype(int)) >= 0).all()
    assert len(np.unique(flat)) == 256


def test_window_maps_a_12_bit_range(tmp_path):
    twelve = (GRAY.astype(np.uint32) * 4095 // 255).astype(np.uint16)  # values 0..4095
    path = _save(tmp_path, "ct.png", Image.fromarray(twelve))
    full, _ = decoding.read(path)
    windowed, _ = decoding.read(path, window=[0, 4095])
    assert full.max() <= 16  # 12 bits of 16: nearly black without a window
    assert np.abs(windowed[..., 0].astype(int) - GRAY).max() <= 1


def test_float_images_read_on_0_1(tmp_path):
    arr, _ = decoding.read(_save(tmp_path, "f.tif", Image.fromarray(GRAY.astype(np.float32) / 255)))
    assert np.array_equal(arr[..., 0], GRAY)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP", "BMP"])
def test_exif_rotated_copy_loads_equal_to_the_upright_one(tmp_path, fmt):
    upright = Image.fromarray(RGB)
    # Orientation 6: the file stores the picture turned so that a viewer must rotate it 90 degrees clockwise.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    ext = {"JPEG": "JPG", "TIFF": "Tif", "WEBP": "webp", "PNG": "PNG", "BMP": "bmp"}[fmt]  # any case
    kw = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    a, _ = decoding.read(_save(tmp_path, f"up.{ext}", upright, format=fmt, **kw))
    if fmt == "BMP":  # BMP carries no EXIF: it only has to load
        assert a.shape == RGB.shape
        return
    b, size = decoding.read(_save(tmp_path, f"rot.{ext}", stored, format=fmt, exif=exif, **kw))
    # JPEG re-encodes the turned pixels in other blocks: equal up to rounding (unrotated, they differ by ~100).
    assert size == (10, 6) and np.abs(a.astype(int) - b).max() <= (3 if fmt == "JPEG" else 0)


def test_masks_palette_grayscale_and_equal_channels(tmp_path):
    classes = (GRAY % 3).astype(np.uint8)
    pal = Image.fromarray(classes, "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    for name, im in (("p.png", pal), ("l.png", Image.fromarray(classes)),
                     ("rgb.png", Image.fromarray(np.repeat(classes[..., None], 3, 2))),
                     ("m16.png", Image.fromarray(classes.astype(np.uint16)))):
        arr, _ = decoding.read(_save(tmp_path, name, im), "mask")
        assert np.array_equal(arr, classes), name
    with pytest.raises(decoding.DataError, match="single-channel"):
        decoding.read(_save(tmp_path, "colour.png", Image.fromarray(RGB)), "mask")


@pytest.mark.parametrize("mode", decoding.RESIZE)
def test_fit_then_unfit_returns_the_mask_at_its_own_size(mode):
    mask = np.zeros((30, 60), np.uint8)
    mask[10:20, 20:40] = 1  # a central block survives every mode
    small = decoding.fit(mask, 16, mode, "mask")
    assert small.shape == (16, 16)
    back = decoding.unfit(small, 60, 30, mode)
    assert back.shape == (30, 60) and back[15, 30] == 1 and back[0, 0] == 0


def test_pad_keeps_aspect_and_pads_with_zero():
    img = np.full((20, 40, 3), 200, np.uint8)
    out = decoding.fit(img, 10, "pad")
    assert (out[:2] == 0).all() and (out[-3:] == 0).all() and (out[3:7] == 200).all()
    crop = decoding.fit(img, 10, "crop")
    assert (crop == 200).all()


def test_unreadable_file_is_named(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(decoding.DataError, match="broken.jpg: cannot read image"):
        decoding.read(path)


def test_hidden_files_are_not_images(tmp_path):
    for name in ("a.PNG", ".b.png", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    assert [p.name for p in decoding.image_files(tmp_path)] == ["a.PNG"]


def test_an_image_over_the_pixel_limit_names_the_file_and_the_param(tmp_path):
    from PIL import Image

    Image.new("RGB", (20, 20)).save(tmp_path / "big.png")
    with pytest.raises(decoding.DataError, match=r"big.png: over prepare.max_image_pixels=300 .*\(20x20\)"):
        decoding.read(tmp_path / "big.png", max_pixels=300)
    assert decoding.read(tmp_path / "big.png", max_pixels=400)[1] == (20, 20)


def _photo(width, height, seed):
    """A JPEG-like photograph: smooth shading, hard-edged shapes and sensor noise (uint8 (H, W, 3))."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    image = np.stack([120 + 100 * np.sin(3 * x + c) * np.cos(2 * y - c) for c in range(3)], -1)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.2)
        image[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("width,height,orientation", [(512, 512, 1), (512, 384, 1), (640, 480, 6), (333, 517, 1)])
def test_jpegs_decode_at_the_size_used_within_the_tolerance(tmp_path, width, height, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path, "photo.jpg", Image.fromarray(_photo(width, height, width)), quality=90, exif=exif)
    whole, size = decoding.read(path)  # no fit_to: every pixel decoded
    assert size == ((height, width) if orientation == 6 else (width, height)) == (whole.shape[1], whole.shape[0])
    for target, mode in [(48, "pad"), (64, "crop"), (64, "stretch"), (128, "pad"), (200, "pad")]:
        drafted, seen = decoding.read(path, fit_to=(target, mode))
        assert seen == size  # the file's own size, not the decoded one: unfit and the drift checks use it
        w, h, _, _ = decoding.geometry(*size, target, mode)
        # The largest DCT scale (1/8 at most) that stays at or above twice what fit needs, on both sides.
        assert drafted.shape[1] >= 2 * w and drafted.shape[0] >= 2 * h
        assert drafted.shape[1] < 4 * w or drafted.shape[0] < 4 * h or drafted.shape[0] * 8 <= whole.shape[0] + 7
        fitted, original = decoding.load(path, target, mode)
        difference = np.abs(fitted.astype(int) - decoding.fit(whole, target, mode).astype(int)).mean()
        assert original == size and difference <= decoding.DRAFT_TOLERANCE, (target, mode, difference)


def test_only_jpeg_images_are_drafted(tmp_path):
    path = _save(tmp_path, "photo.png", Image.fromarray(_photo(256, 256, 0)))
    assert decoding.read(path, fit_to=(32, "pad"))[0].shape == (256, 256, 3)
    mask = _save(tmp_path, "mask.jpg", Image.fromarray(np.zeros((256, 256), np.uint8)))
    assert decoding.read(mask, "mask", fit_to=(32, "pad"))[0].shape == (256, 256)  # masks: every pixel, always
