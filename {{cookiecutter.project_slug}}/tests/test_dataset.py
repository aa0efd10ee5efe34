import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from {{ cookiecutter.package_name }}.lib import dataset, ingest


def _seg_rows(n=6, size=8):
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return images, (images[..., 0] > 127).astype(np.uint8)  # the mask marks where channel 0 is bright


def test_split_augmentation_moves_masks_with_images():
    images, masks = _seg_rows()
    ds = dataset.Split(images, masks, augment={"hflip": True, "vflip": True, "rot90": True}, seed=0)
    moved = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.dtype == torch.uint8 and x.shape == (3, 8, 8) and y.dtype == torch.int64
            assert torch.equal((x[0] > 127).long(), y)  # every geometric transform moved both alike
            moved += not torch.equal(x, torch.from_numpy(images[i]).permute(2, 0, 1))
    assert moved > 0


def test_augmentation_is_per_sample_seeded_whatever_the_workers():
    images, masks = _seg_rows(n=8)
    cfg = {"hflip": True, "rot90": True, "brightness": 0.3, "crop_scale": [0.5, 1.0]}
    ds = dataset.Split(images, masks, augment=cfg, seed=3)
    a = ds[5]
    assert all(torch.equal(u, v) for u, v in zip(a, ds[5], strict=True))  # same seed, epoch, sample
    ds.set_epoch(1)
    assert not torch.equal(a[0], ds[5][0])  # a new draw next epoch

    def batches(workers):
        loader = DataLoader(ds, batch_size=4, num_workers=workers)
        return [b for batch in loader for b in batch]
    assert all(torch.equal(u, v) for u, v in zip(batches(0), batches(2), strict=True))


def test_a_split_travels_to_spawned_workers_as_its_folder(tmp_path):
    images, masks = _seg_rows(n=40, size=16)  # 30 KB of images
    ingest.write_split(tmp_path / "s", zip(images, masks, strict=True), 40, 16, "segmentation", 2)
    split = dataset.Split.open(tmp_path / "s", {"hflip": True}, seed=1)
    blob = pickle.dumps(split)
    assert len(blob) < images.nbytes / 10  # not a copy of the rows
    assert all(torch.equal(u, v) for u, v in zip(split[3], pickle.loads(blob)[3], strict=True))


def test_classification_split_gives_scalar_labels():
    images = np.zeros((3, 4, 4, 3), np.uint8)
    ds = dataset.Split(images, np.array([2, 0, 1]), augment={"hflip": True, "brightness": 0.2})
    x, y = dataset.head(ds, 3)
    assert x.shape == (3, 3, 4, 4) and y.tolist() == [2, 0, 1]


def test_written_split_reads_back_lazily(tmp_path):
    images, masks = _seg_rows(n=5)
    sums = ingest.write_split(tmp_path / "s", zip(images, masks, strict=True), 5, 8, "segmentation", 2)
    mean, std = ingest.channel_stats_from(sums["sums"], sums["pixels"])
    pixels = images.reshape(-1, 3) / 255
    assert np.allclose(mean, pixels.mean(0)) and np.allclose(std, pixels.std(0))
    assert sums["counts"].tolist() == np.bincount(masks.ravel(), minlength=2).tolist()
    x, y = dataset.load_split(tmp_path / "s")
    assert isinstance(dataset.open_split(tmp_path / "s")[0], np.memmap)
    assert len(x) == 5 and torch.equal(x[1:3], torch.from_numpy(images[1:3]).permute(0, 3, 1, 2))
    assert torch.equal(y[torch.tensor([4, 0])], torch.from_numpy(masks[[4, 0]]).long())


def test_rows_short_of_the_declared_count_are_an_error(tmp_path):
    images, masks = _seg_rows(n=2)
    with pytest.raises(RuntimeError, match="wrote 2 rows, expected 3"):
        ingest.write_split(tmp_path / "s", zip(images, masks, strict=True), 3, 8, "segmentation", 2)
