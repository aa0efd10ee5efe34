"""Which images go to train, val and test: a seeded shuffle, stratified per class for class folders.

    >>> s = split_indices(10, 0.2, 0.2, seed=0)
    >>> [len(s[k]) for k in ("train", "val", "test")]
    [6, 2, 2]
"""

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
        raise DataError(too_few(n, val_fraction, test_fraction))
    order = np.random.default_rng(seed).permutation(n)
    return {"train": order[n_val + n_test:], "val": order[:n_val], "test": order[n_val:n_val + n_test]}


def sizes(n, val_fraction, test_fraction):
    """(train, val, test) image counts of n images at these fractions."""
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return n - n_val - n_test, n_val, n_test


def too_few(n, val_fraction, test_fraction):
    """Which split would be empty, and what would fill it: more images (how many), or, with 3 images or more,
    other fractions, computed and checked: lower ones when val and test would take every image, a higher one
    where val or test rounds to no image."""
    counts = sizes(n, val_fraction, test_fraction)
    empty = [name for name, k in zip(("train", "val", "test"), counts, strict=True) if k < 1]
    # 0 < fractions < 0.5 (params.py): val, test and train all grow with n, so enough images exist (searched up to
    # a million more: a fraction below 1e-6 only gets the advice to add images).
    enough = next((m for m in range(n + 1, n + 10**6) if min(sizes(m, val_fraction, test_fraction)) >= 1), None)
    fixes = [f"add images (at least {enough} in all at these fractions)" if enough else "add images"]
    if n >= 3:
        if counts[0] < 1:  # val and test take every image: lower them, to at most what leaves train one or two
            each = float(f"{((n - 1) // 2) / n:.3g}")
            pair, words = (each, each), f"lower val_fraction and test_fraction (e.g. {each} each)"
        else:  # val or test rounds to no image: raise that one to one image's worth
            one = float(f"{1 / n:.3g}")
            pair = (max(val_fraction, one) if counts[1] < 1 else val_fraction,
                    max(test_fraction, one) if counts[2] < 1 else test_fraction)
            words = "raise " + " and ".join(f"{k}_fraction to {one}" for k, c in (("val", counts[1]),
                                                                                  ("test", counts[2])) if c < 1)
        if min(sizes(n, *pair)) >= 1:
            train, val, test = sizes(n, *pair)
            fixes.append(f"{words}: train {train}, val {val}, test {test}")
    return (f"{n} images are too few for val_fraction={val_fraction}, test_fraction={test_fraction}: the "
            f"{' and '.join(empty)} split{'s' if len(empty) > 1 else ''} would be empty (train {counts[0]}, val "
            f"{counts[1]}, test {counts[2]}); {', or '.join(fixes)}")


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
