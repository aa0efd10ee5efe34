import numpy as np
import pytest
from PIL import Image

from {{ cookiecutter.package_name }}.lib import ingest


@pytest.mark.parametrize("task,num_classes", [("segmentation", 2), ("segmentation", 4), ("classification", 3)])
def test_synthetic_is_seeded_and_well_formed(task, num_classes):
    a = ingest.make_synthetic(task, n=12, size=32, num_classes=num_classes, seed=1)
    b = ingest.make_synthetic(task, n=12, size=32, num_classes=num_classes, seed=1)
    c = ingest.make_synthetic(task, n=12, size=32, num_classes=num_classes, seed=2)
    images, targets, names = a
    assert np.array_equal(images, b[0]) and np.array_equal(targets, b[1])
    assert not np.array_equal(images, c[0])
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    assert len(names) == num_classes
    assert targets.min() >= 0 and targets.max() < num_classes
    if task == "segmentation":
        assert targets.shape == (12, 32, 32)
        assert 0.02 < (targets > 0).mean() < 0.6  # shapes are present, not everywhere
    else:
        assert np.bincount(targets).tolist() == [4, 4, 4]  # balanced


def test_synthetic_rejects_unsupported_class_count():
    with pytest.raises(ingest.DataError, match="num_classes"):
        ingest.make_synthetic("classification", n=4, size=32, num_classes=9, seed=0)


def test_channel_stats_on_known_values():
    images = np.zeros((2, 1, 2, 3), np.uint8)
    images[0, ..., 0] = 255  # red channel: half the pixels 1.0, half 0.0
    mean, std = ingest.channel_stats(images)
    assert mean[0] == pytest.approx(0.5) and std[0] == pytest.approx(0.5)
    assert mean[1] == 0 and std[1] > 0  # std floored: normalisation never divides by zero


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _segmentation_folder(root, n=4, size=20):
    rng = np.random.default_rng(0)
    for i in range(n):
        _png(root / "images" / f"im{i}.png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        mask = np.zeros((size, size), np.uint8)
        mask[5:10, 5:10] = 255
        _png(root / "masks" / f"im{i}.png", mask)


def load_folder(task, root, size, num_classes):
    """What prepare does with a folder, in one process: (images, targets, class names, num_classes)."""
    items, names, num_classes = ingest.folder_items(task, root, num_classes)
    if num_classes == "auto":
        num_classes = ingest.mask_classes([m for _, m in items])
    rows = list(ingest.decoded(items, None, task=task, size=size, resize="stretch", window=None,
                             num_classes=num_classes))
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), names, num_classes


def test_load_segmentation_folder(tmp_path):
    _segmentation_folder(tmp_path)
    _png(tmp_path / "images" / ".im9.png", np.zeros((3, 3, 3), np.uint8))  # hidden: ignored, no mask needed
    (tmp_path / "masks" / ".ipynb_checkpoints").mkdir()
    images, masks, _, k = load_folder("segmentation", tmp_path, size=16, num_classes=2)
    assert images.shape == (4, 16, 16, 3) and masks.shape == (4, 16, 16)
    assert set(np.unique(masks)) == {0, 1}  # 255 read as foreground


@pytest.mark.parametrize("values,expected", [((0, 255), 2), ((0, 1), 2), ((0, 1, 3), 4)])
def test_segmentation_num_classes_auto(tmp_path, values, expected):
    _segmentation_folder(tmp_path, n=len(values))
    for i, v in enumerate(values):
        _png(tmp_path / "masks" / f"im{i}.png", np.full((20, 20), v, np.uint8))
    assert load_folder("segmentation", tmp_path, size=8, num_classes="auto")[3] == expected


def test_segmentation_auto_refuses_255_among_classes(tmp_path):
    _segmentation_folder(tmp_path, n=2)
    _png(tmp_path / "masks" / "im0.png", np.full((20, 20), 2, np.uint8))
    with pytest.raises(ingest.DataError, match="255 is the binary foreground"):
        load_folder("segmentation", tmp_path, size=8, num_classes="auto")


def test_load_classification_folder(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.jpg", np.full((10, 12, 3), 40 * i, np.uint8))
    (tmp_path / "README.md").write_text("not a class")
    _png(tmp_path / ".ipynb_checkpoints" / "0.jpg", np.zeros((4, 4, 3), np.uint8))  # hidden: not a class
    _png(tmp_path / "cat" / ".ipynb_checkpoints" / "x.png", np.zeros((4, 4, 3), np.uint8))
    images, labels, names, k = load_folder("classification", tmp_path, size=16, num_classes="auto")
    assert images.shape == (6, 16, 16, 3) and k == 2
    assert labels.tolist() == [0, 0, 0, 1, 1, 1] and names == ["cat", "dog"]


@pytest.mark.parametrize("break_it,message", [
    (lambda r: (r / "masks" / "im1.png").unlink(), "im1.png: no mask"),
    (lambda r: _png(r / "masks" / "im2.png", np.zeros((8, 8), np.uint8)), "must be the same size"),
    (lambda r: (r / "images" / "im3.png").write_bytes(b"not a png"), "cannot read image"),
    (lambda r: _png(r / "masks" / "im0.png", np.full((20, 20), 7, np.uint8)), r"values \[7\] out of range"),
    (lambda r: _png(r / "masks" / "extra.png", np.zeros((20, 20), np.uint8)), "mask has no image"),
    (lambda r: [p.unlink() for p in (r / "images").iterdir()], "no images found"),
    # Paired by the name without its suffix: two files of one name would share a mask, or lose one.
    (lambda r: _png(r / "images" / "im1.JPG", np.zeros((20, 20, 3), np.uint8)),
     r"images/im1.JPG and .*images/im1.png: two images named im1 .*rename or remove one"),
    (lambda r: _png(r / "masks" / "im2.tif", np.zeros((20, 20), np.uint8)),
     r"masks/im2.png and .*masks/im2.tif: two masks named im2"),
])
def test_bad_segmentation_data_names_the_file(tmp_path, break_it, message):
    _segmentation_folder(tmp_path)
    break_it(tmp_path)
    with pytest.raises(ingest.DataError, match=message):
        load_folder("segmentation", tmp_path, size=16, num_classes=2)


def test_wrong_number_of_class_folders(tmp_path):
    _png(tmp_path / "only" / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ingest.DataError, match="found 1 class folders"):
        load_folder("classification", tmp_path, size=8, num_classes=2)
    with pytest.raises(ingest.DataError, match="auto found 1 class folders"):
        load_folder("classification", tmp_path, size=8, num_classes="auto")
