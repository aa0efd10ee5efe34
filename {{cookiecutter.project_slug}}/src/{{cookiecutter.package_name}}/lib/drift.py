"""Drift of new images away from the training split: reference statistics (prepare) and two-sample tests (predict).

The unit of observation is the image, not the pixel: the pixels of one image are not independent draws, so a
test on pooled pixel counts would call any batch of a few images "different" (millions of "observations").
Each image gives FEATURES: the mean and standard deviation of each channel of the image as the model sees it
(decoded and fitted to the training size by decoding.py, the same rules in prepare and predict), and its
original width and height. prepare streams the train split through `Statistics` and writes `reference()`;
predict streams the new images through another `Statistics` and `check()` compares the two:

- one two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp) per feature, new images vs the reference;
- Bonferroni over the features: p_adjusted = min(1, p x number of tests); the family's false-alarm rate on
  images from the training distribution is at most `alpha`;
- a feature drifts when p_adjusted < alpha AND its KS statistic (the largest gap between the two cumulative
  distributions, 0..1) is at least `min_effect`: a very large batch makes a harmless shift significant;
- the drift score is the smallest p_adjusted; the verdict is drift when any feature drifts.

Also reported, not tested: the total-variation distance between the per-channel pixel histograms (how
different, not whether), and for classification the predicted class balance against the training one
(chi-square goodness of fit, scipy.stats.chisquare), which measures the model as much as the data.

    >>> rng = np.random.default_rng(0)
    >>> ref, new = Statistics(), Statistics()
    >>> for _ in range(50):
    ...     ref.add(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (8, 8))
    ...     new.add(rng.integers(0, 128, (8, 8, 3), dtype=np.uint8), (8, 8))
    >>> check(reference(ref, ["a"], [1]), new, alpha=0.01, min_effect=0.1)["drift"]
    True
"""

import numpy as np

FEATURES = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "width", "height")
# Per-image rows kept, of the training split and of the new images: a seeded uniform sample beyond this. 10,000
# rows bound the reference file (1.3 MB measured) and predict's memory; a KS test on 10,000 vs 10,000 already
# resolves a statistic of 0.03 at alpha 0.01.
SAMPLE = 10_000


def sample_mask(n, seed, size=SAMPLE):
    """Which of n streamed images the reference keeps: all up to `size`, else a seeded uniform choice."""
    keep = np.zeros(n, bool)
    keep[np.random.default_rng(seed).choice(n, min(n, size), replace=False)] = True
    return keep


def channel_histogram(image):
    """(3, 256) int64: how many pixels of a uint8 (H, W, 3) image hold each value, per channel (one bincount)."""
    index = image.reshape(-1, 3).astype(np.uint16) + np.array([0, 256, 512], np.uint16)  # (H*W, 3): value + offset
    return np.bincount(index.ravel(), minlength=768).reshape(3, 256)


def image_features(image, original, histogram=None):
    """(8,) float64: per-channel mean and std of a fitted uint8 (S, S, 3) image, then its original (width, height).
    Computed from the image's channel histogram (exact sums over 256 values, not a float copy of its pixels)."""
    h = channel_histogram(image) if histogram is None else histogram
    values, n = np.arange(256, dtype=np.float64), h.sum(1)
    mean = h @ values / n
    std = np.sqrt(np.maximum(h @ (values * values) / n - mean * mean, 0))
    return np.concatenate([mean, std, np.asarray(original, np.float64)])


class Statistics:
    """Running statistics of a stream of fitted images: the per-channel histogram of every pixel, and the
    per-image features of the images `keep` selects (a boolean array over the stream; None: all)."""

    def __init__(self, keep=None):
        self.keep, self.seen = keep, 0
        self.histogram = np.zeros((3, 256), np.int64)  # (channel, uint8 value)
        self.features = []

    def add(self, image, original):
        h = channel_histogram(image)
        self.histogram += h
        if self.keep is None or self.keep[self.seen]:
            self.features.append(image_features(image, original, h))
        self.seen += 1

    def observe(self, rows):
        """Pass (image, target, original size) rows through unchanged, adding each image on the way (prepare)."""
        for row in rows:
            self.add(row[0], row[2])
            yield row


def reference(stats, class_names, class_counts):
    """The reference file's content: features of the sampled training images, pixel histograms, class balance
    (image labels for classification, pixel classes for segmentation)."""
    counts = np.asarray(class_counts, np.float64)
    return {"feature_names": list(FEATURES), "images": stats.seen, "sampled": len(stats.features),
            "features": np.round(np.asarray(stats.features), 3).tolist(), "histogram": stats.histogram.tolist(),
            "class_names": list(class_names), "class_fractions": (counts / counts.sum()).tolist()}


def ks_tests(ref, new):
    """One scipy.stats.ks_2samp per feature column of (M, F) and (N, F) arrays."""
    from scipy import stats

    tests = []
    for j, name in enumerate(FEATURES):
        r = stats.ks_2samp(ref[:, j], new[:, j])
        tests.append({"feature": name, "test": "ks_2samp", "statistic": float(r.statistic),
                      "p_value": float(r.pvalue), "reference_median": float(np.median(ref[:, j])),
                      "new_median": float(np.median(new[:, j]))})
    return tests


def histogram_distance(a, b):
    """Total-variation distance (0..1) between the normalised pixel histograms of each channel."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (0.5 * np.abs(a / a.sum(1, keepdims=True) - b / b.sum(1, keepdims=True)).sum(1)).tolist()


def class_balance(fractions, predicted_counts):
    """Predicted labels against the training class fractions: chi-square goodness of fit, skipped while an
    expected count is under 5 (the test's approximation needs them)."""
    from scipy import stats

    observed = np.asarray(predicted_counts, np.float64)
    expected = np.asarray(fractions) * observed.sum()
    distance = float(0.5 * np.abs(observed / observed.sum() - np.asarray(fractions)).sum())
    out = {"test": "chisquare", "predicted_fractions": (observed / observed.sum()).tolist(),
           "total_variation": distance}
    if expected.min() < 5:
        return {**out, "skipped": f"an expected count is {expected.min():.1f} < 5: too few images for the test"}
    r = stats.chisquare(observed, expected)
    return {**out, "statistic": float(r.statistic), "p_value": float(r.pvalue)}


def check(ref, new, alpha, min_effect, predicted_counts=None):
    """The evidence: every test, the drift score (smallest Bonferroni-adjusted p) and the verdict."""
    if not new.features:
        raise ValueError("no images to check for drift")
    tests = ks_tests(np.asarray(ref["features"], np.float64), np.asarray(new.features))
    for t in tests:
        t["p_adjusted"] = min(1.0, t["p_value"] * len(tests))
        t["drift"] = t["p_adjusted"] < alpha and t["statistic"] >= min_effect
    drifted = [t["feature"] for t in tests if t["drift"]]
    evidence = {"checked": True, "drift": bool(drifted), "drifted_features": drifted,
                "score": min(t["p_adjusted"] for t in tests),
                "rule": f"drift when a feature's Bonferroni-adjusted KS p-value (x{len(tests)}) < alpha and its "
                        "KS statistic >= min_effect",
                "alpha": alpha, "min_effect": min_effect, "images": new.seen, "sampled": len(new.features),
                "reference_images": ref["images"],
                "reference_sampled": ref["sampled"], "tests": tests,
                "pixel_histogram_total_variation": dict(zip("rgb", histogram_distance(ref["histogram"],
                                                                                      new.histogram), strict=True))}
    if predicted_counts is not None:
        evidence["predicted_class_balance"] = {"class_names": ref["class_names"],
                                               **class_balance(ref["class_fractions"], predicted_counts)}
    return evidence


def summary(evidence):
    """One line for predict's output."""
    if not evidence["checked"]:
        return f"drift not checked: {evidence['reason']}"
    worst = max(evidence["tests"], key=lambda t: (t["drift"], -t["p_adjusted"], t["statistic"]))
    detail = (f"{worst['feature']}: KS {worst['statistic']:.2f}, adjusted p {worst['p_adjusted']:.2g}; "
              f"alpha {evidence['alpha']}, min_effect {evidence['min_effect']}; {evidence['sampled']} images vs "
              f"{evidence['reference_sampled']} training images")
    if evidence["drift"]:
        return f"WARNING: drift from the training images in {', '.join(evidence['drifted_features'])} ({detail})"
    return f"no drift detected (score {evidence['score']:.2g}; {detail})"
