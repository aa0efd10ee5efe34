"""What the later stages read: a prepared split (ingest.py wrote it) memory-mapped as tensors, batches, and the
Dataset with its per-sample seeded transforms.v2 augmentation. Nothing is read until a row is indexed.

    >>> to_float(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)).max().item()
    1.0
"""

from pathlib import Path

import numpy as np
import torch

from {{ cookiecutter.package_name }}.lib import paths

# --- reading prepared splits --------------------------------------------------------------------------------

def open_split(folder):
    """The split's two arrays, memory-mapped read-only: nothing is read until a row is indexed."""
    return tuple(np.load(Path(folder) / name, mmap_mode="r") for name in paths.SPLIT_FILES)


class _Rows:
    # Torch rows of a memory-mapped array, read on indexing (an int, a slice, or an index array / tensor).
    def __init__(self, array, image):
        self.array, self.image = array, image

    def __len__(self):
        return len(self.array)

    def __getitem__(self, i):
        if isinstance(i, torch.Tensor):
            i = i.numpy()
        rows = torch.from_numpy(np.array(self.array[i]))  # a copy: the map is read-only
        return rows.movedim(-1, -3).contiguous() if self.image else rows.long()  # (..., H, W, 3) -> (..., 3, H, W)


def load_split(folder):
    """(images, targets) of a prepared split, read lazily: images[i] / images[a:b] / images[index tensor] give
    uint8 (B, 3, H, W) tensors, targets the int64 masks (B, H, W) or labels (B,)."""
    images, targets = open_split(folder)
    return _Rows(images, True), _Rows(targets, False)


def to_float(images):
    """uint8 (B, 3, H, W) -> float32 in [0, 1]; normalisation happens inside the model."""
    return images.float().div_(255)


def batches(images, targets, batch_size):
    """(float32 (B, 3, H, W) in [0, 1], targets) batches, in order, of uint8 images (N, 3, H, W) or of float
    images already in [0, 1] (adversarial or corrupted copies)."""
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        yield (to_float(x) if x.dtype == torch.uint8 else x), targets[i:i + batch_size]


# --- the Dataset and its augmentation -----------------------------------------------------------------------

def augmentation(cfg):
    """torchvision.transforms.v2 pipeline from params' train.augment (rot90 is applied by Split itself:
    v2 has no 90-degree rotation), or None when nothing is on. Masks ride along as tv_tensors.Mask: geometric
    transforms move them (nearest neighbour), colour transforms leave them alone."""
    from torchvision.transforms import v2

    steps = []
    if cfg.get("crop_scale"):
        steps.append(v2.RandomResizedCrop(cfg["size"], scale=tuple(cfg["crop_scale"]), antialias=True))
    if cfg.get("hflip"):
        steps.append(v2.RandomHorizontalFlip())
    if cfg.get("vflip"):
        steps.append(v2.RandomVerticalFlip())
    jitter = {k: cfg.get(k) or 0 for k in ("brightness", "contrast", "saturation", "hue")}
    if any(jitter.values()):
        steps.append(v2.ColorJitter(**jitter))
    return v2.Compose(steps) if steps else None


def sample_seed(seed, epoch, index):
    """A seed of its own for each (seed, epoch, sample): augmentation independent of loader workers and ranks."""
    return int(np.random.SeedSequence([seed, epoch, int(index)]).generate_state(1)[0])


class Split(torch.utils.data.Dataset):
    """Rows of a prepared split: (uint8 image (3, H, W), int64 target: mask (H, W) or label ()).

    With `augment` (params' train.augment), each row is augmented from its own seed, drawn from (seed, epoch,
    index): the same sample gets the same augmentation whatever the number of loader workers or DDP ranks,
    and a different one each epoch (`set_epoch`)."""

    def __init__(self, images, targets, augment=None, seed=0):
        self.images, self.targets = images, targets  # (N, H, W, 3) uint8 and (N, ...) arrays, e.g. memory-mapped
        self.seed, self.epoch = seed, 0
        self.rot90 = bool(augment and augment.get("rot90"))
        self.transform = augmentation({**augment, "size": images.shape[1:3]}) if augment else None

    @classmethod
    def open(cls, folder, augment=None, seed=0):
        split = cls(*open_split(folder), augment=augment, seed=seed)
        split.folder = folder
        return split

    def __getstate__(self):
        # Sent to spawned loader workers (macOS, Windows) as its folder, not as a pickled copy of the map.
        state = dict(self.__dict__)
        if state.get("folder") is not None:
            state["images"] = state["targets"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.images is None:
            self.images, self.targets = open_split(self.folder)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = torch.from_numpy(np.array(self.images[i])).permute(2, 0, 1)  # (3, H, W) uint8, a copy
        y = torch.from_numpy(np.array(self.targets[i])).long()  # (H, W) or ()
        if self.transform is None and not self.rot90:
            return x, y
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed would also queue a CUDA seeding per sample.
            torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, i))
            return self._augment(x, y)

    def _augment(self, x, y):
        from torchvision import tv_tensors

        seg = y.dim() == 2
        if self.transform is not None:
            if seg:
                x, y = self.transform(tv_tensors.Image(x), tv_tensors.Mask(y))
            else:
                x = self.transform(tv_tensors.Image(x))
        if self.rot90 and x.shape[-1] == x.shape[-2]:
            k = int(torch.randint(0, 4, ()))
            x, y = x.rot90(k, (-2, -1)), (y.rot90(k, (-2, -1)) if seg else y)
        return x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)


def head(dataset, n):
    """The first n rows of a Dataset, stacked: (uint8 (n, 3, H, W), targets)."""
    rows = [dataset[i] for i in range(min(n, len(dataset)))]
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
