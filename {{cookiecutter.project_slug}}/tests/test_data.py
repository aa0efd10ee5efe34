import numpy as np
import pytest
import torch
from PIL import Image

from {{ cookiecutter.package_name }} import data


@pytest.mark.parametrize("task,num_classes", [("segmentation", 2), ("segmentation", 4), ("classification", 3)])
def test_synthetic_is_seeded_and_well_formed(task, num_classes):
    a = data.make_synthetic(task, n=12, size=32, num_classes=num_classes, seed=1)
    b = data.make_synthetic(task, n=12, size=32, num_classes=num_classes, seed=1)
    c = data.make_synthetic(task, n=12, size=32, num_classes=num_classes, seed=2)
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
    with pytest.raises(data.DataError, match="num_classes"):
        data.make_synthetic("classification", n=4, size=32, num_classes=9, seed=0)


def test_splits_are_disjoint_complete_and_seeded():
    s = data.split_indices(100, 0.15, 0.15, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [70, 15, 15]
    assert sorted(np.concatenate(list(s.values())).tolist()) == list(range(100))
    assert np.array_equal(s["val"], data.split_indices(100, 0.15, 0.15, seed=0)["val"])


def test_too_few_images_for_a_split():
    with pytest.raises(data.DataError, match="too few"):
        data.split_indices(3, 0.15, 0.15, seed=0)


def test_channel_stats_on_known_values():
    images = np.zeros((2, 1, 2, 3), np.uint8)
    images[0, ..., 0] = 255  # red channel: half the pixels 1.0, half 0.0
    mean, std = data.channel_stats(images)
    assert mean[0] == pytest.approx(0.5) and std[0] == pytest.approx(0.5)
    assert mean[1] == 0 and std[1] > 0  # std floored: normalisation never divides by zero


def test_augment_moves_masks_with_images():
    x = torch.rand(16, 3, 8, 8)
    # The mask marks where channel 0 is above 0.5: every geometric transform must keep that true.
    y = (x[:, 0] > 0.5).long()
    cfg = {"hflip": True, "vflip": True, "rot90": True, "brightness": 0}
    xa, ya = data.augment(x.clone(), y.clone(), cfg, torch.Generator().manual_seed(0))
    assert torch.equal((xa[:, 0] > 0.5).long(), ya)
    assert not torch.equal(xa, x)


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


def test_load_segmentation_folder(tmp_path):
    _segmentation_folder(tmp_path)
    images, masks, names = data.load_folder("segmentation", tmp_path, size=16, num_classes=2)
    assert images.shape == (4, 16, 16, 3) and masks.shape == (4, 16, 16)
    assert set(np.unique(masks)) == {0, 1}  # 255 read as foreground
    assert len(names) == 2


def test_load_classification_folder(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.jpg", np.full((10, 12, 3), 40 * i, np.uint8))
    (tmp_path / "README.md").write_text("not a class")
    images, labels, names = data.load_folder("classification", tmp_path, size=16, num_classes=2)
    assert images.shape == (6, 16, 16, 3)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1] and names == ["cat", "dog"]


@pytest.mark.parametrize("break_it,message", [
    (lambda r: (r / "masks" / "im1.png").unlink(), "im1.png: no mask"),
    (lambda r: _png(r / "masks" / "im2.png", np.zeros((8, 8), np.uint8)), "must be the same size"),
    (lambda r: (r / "images" / "im3.png").write_bytes(b"not a png"), "cannot read image"),
    (lambda r: _png(r / "masks" / "im0.png", np.full((20, 20), 7, np.uint8)), r"values \[7\] out of range"),
    (lambda r: _png(r / "masks" / "extra.png", np.zeros((20, 20), np.uint8)), "mask has no image"),
    (lambda r: [p.unlink() for p in (r / "images").iterdir()], "no images found"),
])
def test_bad_segmentation_data_names_the_file(tmp_path, break_it, message):
    _segmentation_folder(tmp_path)
    break_it(tmp_path)
    with pytest.raises(data.DataError, match=message):
        data.load_folder("segmentation", tmp_path, size=16, num_classes=2)


def test_wrong_number_of_class_folders(tmp_path):
    _png(tmp_path / "only" / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(data.DataError, match="found 1 class folders"):
        data.load_folder("classification", tmp_path, size=8, num_classes=2)


def test_an_image_over_the_pixel_limit_names_the_file_and_the_param(tmp_path):
    _segmentation_folder(tmp_path, n=2, size=20)
    with pytest.raises(data.DataError, match=r"images/im0.png: over prepare.max_image_pixels=300 .*\(20x20\)"):
        data.load_folder("segmentation", tmp_path, size=16, num_classes=2, max_pixels=300)
    assert len(data.load_folder("segmentation", tmp_path, size=16, num_classes=2, max_pixels=400)[0]) == 2
