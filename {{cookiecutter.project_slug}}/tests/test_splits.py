import numpy as np
import pytest

from {{ cookiecutter.package_name }}.lib import splits


def test_splits_are_disjoint_complete_and_seeded():
    s = splits.split_indices(100, 0.15, 0.15, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [70, 15, 15]
    assert sorted(np.concatenate(list(s.values())).tolist()) == list(range(100))
    assert np.array_equal(s["val"], splits.split_indices(100, 0.15, 0.15, seed=0)["val"])


def test_too_few_images_for_a_split():
    with pytest.raises(splits.DataError, match="too few"):
        splits.split_indices(3, 0.15, 0.15, seed=0)


def test_class_folders_are_split_per_class():
    # A class of 3 among classes of 50: shuffled as one pool it can miss train entirely, and nothing warned.
    labels = [0] * 50 + [1] * 50 + [2] * 3
    for seed in range(20):
        s = splits.split_indices(len(labels), 0.15, 0.15, seed, labels, ["a", "b", "rare"])
        for part in ("train", "val", "test"):
            assert set(np.asarray(labels)[s[part]]) == {0, 1, 2}, (seed, part)
        assert sorted(np.concatenate(list(s.values())).tolist()) == list(range(len(labels)))
    again = splits.split_indices(len(labels), 0.15, 0.15, 3, labels, ["a", "b", "rare"])
    assert np.array_equal(again["train"], splits.split_indices(len(labels), 0.15, 0.15, 3, labels)["train"])


def test_a_class_too_small_to_split_is_refused_by_name():
    with pytest.raises(splits.DataError, match=r"class 'rare' has 1 image\(s\).*at least 3.*add images"):
        splits.split_indices(41, 0.15, 0.15, 0, [0] * 20 + [1] * 20 + [2], ["a", "b", "rare"])


def test_without_labels_the_split_is_the_unstratified_one():
    # The synthetic data passes no labels: its split, and so the default pipeline's metrics, stay as they were.
    s = splits.split_indices(100, 0.15, 0.15, seed=0)
    order = np.random.default_rng(0).permutation(100)
    assert np.array_equal(s["val"], order[:15]) and np.array_equal(s["train"], order[30:])
