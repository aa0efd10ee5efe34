import re

import numpy as np
import pytest

from {{ cookiecutter.package_name }}.lib import splits


def test_splits_are_disjoint_complete_and_seeded():
    s = splits.split_indices(100, 0.15, 0.15, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [70, 15, 15]
    assert sorted(np.concatenate(list(s.values())).tolist()) == list(range(100))
    assert np.array_equal(s["val"], splits.split_indices(100, 0.15, 0.15, seed=0)["val"])


@pytest.mark.parametrize("n, val, test, advice", [
    # val and test round to no image: raising them helps (to what is computed), as more images do
    (3, 0.15, 0.15, r"the val and test splits would be empty \(train 3, val 0, test 0\); add images \(at least 4 "
                    r"in all at these fractions\), or raise val_fraction to 0.333 and test_fraction to 0.333: train 1, "
                    r"val 1, test 1$"),
    (20, 0.02, 0.3, r"the val split would be empty .* \(at least 26 .*\), or raise val_fraction to 0.05: train 13,"),
    # val and test take every image: raising the fractions would make it worse, lowering them helps
    (4, 0.49, 0.49, r"the train split would be empty \(train 0, val 2, test 2\); add images \(at least 5 .*\), or "
                    r"lower val_fraction and test_fraction \(e.g. 0.25 each\): train 2, val 1, test 1$"),
    (2, 0.3, 0.3, r"the train split would be empty .*; add images \(at least 3 in all at these fractions\)$"),
])
def test_too_few_images_for_a_split_says_what_would_work(n, val, test, advice):
    with pytest.raises(splits.DataError, match=rf"{n} images are too few for val_fraction={val}, "
                                               rf"test_fraction={test}: {advice}") as refused:
        splits.split_indices(n, val, test, seed=0)
    # Every figure given is true: the number of images is the least that splits, the fractions proposed split.
    text = str(refused.value)
    enough = int(re.search(r"at least (\d+)", text)[1])
    assert min(splits.sizes(enough, val, test)) >= 1 and min(splits.sizes(enough - 1, val, test)) < 1
    each = re.search(r"e.g. ([\d.]+) each", text)
    proposed = (float(each[1]),) * 2 if each else tuple(
        float(m[1]) if (m := re.search(rf"{k}_fraction to ([\d.]+)", text)) else f for k, f in (("val", val),
                                                                                          ("test", test)))
    assert min(splits.sizes(n, *proposed)) >= 1 or (n < 3 and proposed == (val, test))


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
