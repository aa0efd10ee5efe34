import numpy as np
import pytest
import torch

from conftest import TASK
from {{ cookiecutter.package_name }}.lib import corruptions, drift, ingest

NUM_CLASSES = 2 if TASK == "segmentation" else 3


def statistics(images, keep=None):
    stats = drift.Statistics(keep)
    for image in images:
        stats.add(image, image.shape[1::-1])
    return stats


def corrupted(images, kind, severity):
    """uint8 (N, H, W, 3) images under corruptions.py's `kind` at `severity`, back as uint8."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y = corruptions.corrupt(x, kind, severity, torch.Generator().manual_seed(0))
    return (y * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def reference():
    train, targets, names = ingest.make_synthetic(TASK, 200, 32, NUM_CLASSES, seed=1)
    counts = np.bincount(targets.ravel(), minlength=NUM_CLASSES)
    return drift.reference(statistics(train), names, counts)


@pytest.fixture(scope="module")
def fresh():
    """Images from the training distribution: the same generator, a seed the reference never saw."""
    return ingest.make_synthetic(TASK, 40, 32, NUM_CLASSES, seed=7)[0]


def test_training_like_images_do_not_drift(reference, fresh):
    evidence = drift.check(reference, statistics(fresh), alpha=0.01, min_effect=0.1)
    assert not evidence["drift"] and evidence["score"] >= 0.01 and evidence["images"] == 40
    assert [t["feature"] for t in evidence["tests"]] == list(drift.FEATURES)
    assert drift.summary(evidence).startswith("no drift detected")


@pytest.mark.parametrize(("kind", "features"), [("gaussian_noise", {"std_r", "std_g", "std_b"}),
                                                ("brightness", {"mean_r", "mean_g", "mean_b"})])
def test_strongly_corrupted_images_drift(reference, fresh, kind, features):
    evidence = drift.check(reference, statistics(corrupted(fresh, kind, 5)), alpha=0.01, min_effect=0.1)
    assert evidence["drift"] and evidence["score"] < 0.01
    assert features <= set(evidence["drifted_features"])
    assert "width" not in evidence["drifted_features"]  # same size: not blamed on size
    assert drift.summary(evidence).startswith("WARNING: drift")


def test_min_effect_keeps_a_significant_but_small_shift_from_counting(reference, fresh):
    shifted = np.clip(fresh.astype(int) + 40, 0, 255).astype(np.uint8)
    strict = drift.check(reference, statistics(shifted), alpha=0.01, min_effect=0.1)
    lenient = drift.check(reference, statistics(shifted), alpha=0.01, min_effect=1.0)  # KS statistic <= 1 always
    assert strict["drift"] and not lenient["drift"]
    assert strict["score"] == lenient["score"]  # the same tests, only the rule differs


def test_reference_sample_is_seeded_and_bounded():
    assert drift.sample_mask(5, seed=0, size=10).all()
    keep = drift.sample_mask(100, seed=0, size=10)
    assert keep.sum() == 10 and (keep == drift.sample_mask(100, seed=0, size=10)).all()
    images = np.zeros((100, 4, 4, 3), np.uint8)
    rows = [(im, 0, (4, 4)) for im in images]
    stats = drift.Statistics(keep)
    assert list(stats.observe(iter(rows))) == rows  # passed through unchanged
    assert stats.seen == 100 and len(stats.features) == 10 and stats.histogram[:, 0].tolist() == [1600] * 3


def test_class_balance_is_tested_only_with_enough_images():
    few = drift.class_balance([0.5, 0.5], [3, 1])
    assert "skipped" in few and few["total_variation"] == pytest.approx(0.25)
    many = drift.class_balance([0.5, 0.5], [90, 10])
    assert many["p_value"] < 1e-10 and many["total_variation"] == pytest.approx(0.4)
