"""How far two models agree on the same images (the challenge command): per-image scores and the images where they
disagree most.

    >>> a = np.array([[0, 1], [1, 1]]); b = np.array([[0, 1], [0, 1]])
    >>> mask_agreement(a, b, num_classes=2)  # 3 of 4 pixels; IoU background 1/2, foreground 2/3
    (0.75, 0.5833333333333333)
    >>> label_agreement(np.array([0.9, 0.1]), np.array([0.2, 0.8]))
    (0.0, 0.7)
"""

import heapq
import itertools

import numpy as np


def mask_agreement(a, b, num_classes):
    """(fraction of pixels with the same class, mean IoU over the classes present in either mask) of two
    class-index masks (H, W). A class in neither mask is left out of the mean: it would score a free 1."""
    ious = []
    for c in range(num_classes):
        union = np.logical_or(a == c, b == c).sum()
        if union:
            ious.append(np.logical_and(a == c, b == c).sum() / union)
    return float((a == b).mean()), float(np.mean(ious))


def label_agreement(pa, pb):
    """(1.0 when the two predicted labels are the same, else 0.0; total-variation distance between the two
    probability vectors (C,), 0..1: how far apart they are even when the labels agree)."""
    return float(pa.argmax() == pb.argmax()), float(round(0.5 * np.abs(pa - pb).sum(), 12))


def difference(image, a, b):
    """uint8 (H, W, 3): the image greyed and darkened, pixels where masks a and b differ in magenta."""
    grey = (image.mean(2, keepdims=True) * 0.5).repeat(3, 2)
    return np.where((a != b)[..., None], np.array([255, 0, 255]), grey).astype(np.uint8)


class TopK:
    """The k items with the largest scores seen so far (a heap: memory holds k items whatever the stream)."""

    def __init__(self, k):
        self.k, self.heap, self.order = k, [], itertools.count()

    def add(self, score, item):
        entry = (score, -next(self.order), item)  # ties: the earlier item stays
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, entry)
        elif entry[:2] > self.heap[0][:2]:
            heapq.heapreplace(self.heap, entry)

    def items(self):
        """(score, item) pairs, largest score first."""
        return [(s, item) for s, _, item in sorted(self.heap, key=lambda e: e[:2], reverse=True)]
