"""Which images go to train, val and test: a seeded shuffle, stratified per class for class folders.

    >>> s = split_indices(10, 0.2, 0.2, seed=0)
    >>> [len(s[k]) for k in ("train", "val", "test")]
    [6, 2, 2]
"""

import math

import numpy as np

from {{ cookiecutter.package_name }}.lib.decoding import DataError


def split_indices(n, val_fraction, test_fraction, seed, labels=None, names=None):
    """Shuffled, disjoint train/val/test index arrays covering range(n); every split non-empty. With `labels`
    (class folders), stratified: each class split by the fractions, at least one image of it in every split,
    so no class goes untrained or untested; a class too small for that is refused, by name."""
    if labels is not None:
        return _stratified(np.asarray(labels), val_fraction, test_fraction, seed, names)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if min(n_val, n_test, n - n_val - n_test) < 1:
        need = math.ceil(1 / min(val_fraction, test_fraction)) if min(val_fraction, test_fraction) > 0 else "∞"
        raise DataError(f"{n} images are too few for val_fraction={val_fraction}, test_fraction={test_fraction}: "
                        f"a split would be empty; add images (at least {need}) or raise the fractions")
    order = np.random.default_rng(seed).permutation(n)
    return {"train": order[n_val + n_test:], "val": order[:n_val], "test": order[n_val:n_val + n_test]}


def _stratified(labels, val_fraction, test_fraction, seed, names):
    rng, parts = np.random.default_rng(seed), {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val, n_test = max(1, round(len(idx) * val_fraction)), max(1, round(len(idx) * test_fraction))
        if len(idx) - n_val - n_test < 1:
            name = names[c] if names else f"class {c}"
            raise DataError(f"prepare: class '{name}' has {len(idx)} image(s); every class needs at least "
                            f"{n_val + n_test + 1} (one or more each for train, val and test); add images to "
                            f"its folder or remove it")
        parts["train"].append(idx[n_val + n_test:])
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val:n_val + n_test])
    return {name: rng.permutation(np.concatenate(i)) for name, i in parts.items()}
