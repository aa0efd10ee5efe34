"""prepare: the dataset, split into train/val/test, with normalisation statistics from the train split.

    python -m {{ cookiecutter.package_name }}.prepare     # or: dvc repro prepare

Reads params `seed` and `prepare`; writes data/prepared/{train,val,test}/{images,targets}.npy (streamed row by
row: memory holds a few images whatever the dataset's size), data/prepared/dataset.json,
data/prepared/reference.json (the train split's statistics predict checks new images against, drift.py) and
metrics/prepare.json, each whole or not at all. Folder images are decoded by `prepare.workers` processes,
in order, so the bytes written do not depend on their number. prepare opens no MLflow run: one pipeline run
is one MLflow run, opened by train, which logs these statistics with it.
"""

from {{ cookiecutter.package_name }}.lib import drift, files, ingest, paths, splits, stage


def synthetic(p, seed):
    """(number of images, rows(indices) -> (image, target, original size), class names, num_classes, original
    sizes seen, labels to stratify the splits by: None, so the synthetic split stays as it always was).
    num_classes auto: the synthetic data's own (ingest.SYNTHETIC_CLASSES)."""
    k = ingest.SYNTHETIC_CLASSES[p["task"]] if p["num_classes"] == "auto" else p["num_classes"]
    images, targets, names = ingest.make_synthetic(p["task"], p["synthetic_images"], p["image_size"], k, seed)
    size = (p["image_size"], p["image_size"])  # made at the training size: nothing is resized
    return len(images), lambda idx: ((images[i], targets[i], size) for i in idx), names, k, [], None


def folder(p, pool):
    """The same as `synthetic`, for data/raw: rows are decoded by the pool as they are written."""
    items, names, num_classes = ingest.folder_items(p["task"], p["raw_dir"], p["num_classes"])
    if num_classes == "auto":  # segmentation: from the masks' values
        num_classes = ingest.mask_classes([mask for _, mask in items], pool, p["max_image_pixels"])
        print(f"prepare: num_classes auto -> {num_classes} (from the mask values)")
    if names is None:
        names = ["background", "foreground"] if num_classes == 2 else [f"class_{i}" for i in range(num_classes)]
    originals = []

    def rows(idx):
        for image, target, original in ingest.decoded([items[i] for i in idx], pool, task=p["task"],
                                                    size=p["image_size"], resize=p["resize"], window=p["window"],
                                                    max_pixels=p["max_image_pixels"],
                                                    num_classes=num_classes):
            originals.append(original)
            yield image, target, original
    labels = [label for _, label in items] if p["task"] == "classification" else None  # class folders
    return len(items), rows, names, num_classes, originals, labels


def build(p, seed, out, pool):
    """Write the three splits into folder `out`; returns (dataset description, train class counts, sizes seen,
    drift reference statistics of the train split)."""
    n, rows, names, num_classes, originals, labels = (synthetic(p, seed) if p["source"] == "synthetic"
                                                      else folder(p, pool))
    idx = splits.split_indices(n, p["val_fraction"], p["test_fraction"], seed, labels, names)
    train_stats = drift.Statistics(drift.sample_mask(len(idx["train"]), seed))  # fed as the train rows stream by
    written = {name: ingest.write_split(out / paths.split(name).name,
                                      train_stats.observe(rows(i)) if name == "train" else rows(i), len(i),
                                      p["image_size"], p["task"], num_classes) for name, i in idx.items()}
    mean, std = ingest.channel_stats_from(written["train"]["sums"], written["train"]["pixels"])
    info = {
        "task": p["task"], "source": p["source"], "image_size": p["image_size"], "resize": p["resize"],
        "window": p["window"], "num_classes": num_classes, "class_names": names, "mean": mean, "std": std,
        "sizes": {name: len(i) for name, i in idx.items()},
        "sha256": ingest.digest(out / paths.split(name).name / f for name in idx for f in paths.SPLIT_FILES),
    }
    reference = drift.reference(train_stats, names, written["train"]["counts"])
    return info, written["train"]["counts"], originals, reference


def summary(info, train_counts):
    """metrics/prepare.json: split sizes, normalisation statistics, class balance of the train split."""
    m = {f"{name}/images": n for name, n in info["sizes"].items()}
    m.update({f"mean/{c}": v for c, v in zip("rgb", info["mean"], strict=True)})
    m.update({f"std/{c}": v for c, v in zip("rgb", info["std"], strict=True)})
    for name, c in zip(info["class_names"], train_counts / train_counts.sum(), strict=True):
        m[f"train/fraction/{name}"] = float(c)
    return m


def resized_note(originals, size, resize):
    """One line when the images are not already size x size (None when they all are)."""
    if not originals or all(o == (size, size) for o in originals):
        return None
    (w0, h0), (w1, h1) = min(originals), max(originals)
    span = f"{w0}x{h0}" if (w0, h0) == (w1, h1) else f"{w0}x{h0} to {w1}x{h1}"
    return (f"prepare: images of {span} resized to {size}x{size} (prepare.resize: {resize}); set "
            f"prepare.image_size to train at another size")


# What DVC's tables show of prepare's figures (stage.Stage.publish).
HEADLINE = ("train/images", "val/images", "test/images")


def main():
    st = stage.begin("prepare")
    p, pp = st.params, st.section
    workers = ingest.resolve_workers(pp["workers"]) if pp["source"] == "folder" else 1  # synthetic: nothing to decode
    with ingest.pool(workers) as pool, files.atomic_path(paths.PREPARED, directory=True) as tmp:
        info, train_counts, originals, reference = build(pp, p["seed"], tmp, pool)
        files.write_json(tmp / paths.DATASET.name, info)
        files.write_json(tmp / paths.REFERENCE.name, reference)
    if note := resized_note(originals, pp["image_size"], pp["resize"]):
        print(note)
    st.publish(None, summary(info, train_counts), headline=HEADLINE)  # no run yet: train logs these into its own
    print(f"prepare: {info['sizes']} {info['source']} {info['task']} images of {info['image_size']}px, "
          f"{info['num_classes']} classes, {workers} worker(s) -> {paths.PREPARED}/, {st.metrics_file}")


if __name__ == "__main__":
    stage.run("prepare", main)
