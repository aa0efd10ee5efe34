"""prepare: the dataset, split into train/val/test, with normalisation statistics from the train split.

    python -m {{ cookiecutter.package_name }}.prepare     # or: dvc repro prepare

Reads params `seed` and `prepare`; writes data/prepared/{train,val,test}.npz, data/prepared/dataset.json and
metrics/prepare.json, each whole or not at all. prepare opens no MLflow run: one pipeline run is one MLflow
run, opened by train, which logs these statistics with it.
"""

import numpy as np

from {{ cookiecutter.package_name }} import data, files, paths, stage


def build(p, seed):
    """Returns ({split: (images, targets)}, dataset description)."""
    if p["source"] == "synthetic":
        images, targets, names = data.make_synthetic(p["task"], p["synthetic_images"], p["image_size"],
                                                     p["num_classes"], seed)
    else:
        images, targets, names = data.load_folder(p["task"], p["raw_dir"], p["image_size"], p["num_classes"],
                                                    p["max_image_pixels"])
    idx = data.split_indices(len(images), p["val_fraction"], p["test_fraction"], seed)
    splits = {name: (images[i], targets[i]) for name, i in idx.items()}
    mean, std = data.channel_stats(splits["train"][0])
    info = {
        "task": p["task"], "source": p["source"], "image_size": p["image_size"], "num_classes": p["num_classes"],
        "class_names": names, "mean": mean, "std": std,
        "sizes": {name: len(i) for name, i in idx.items()},
        "sha256": data.digest(*(a for pair in splits.values() for a in pair)),
    }
    return splits, info


def summary(splits, info):
    """metrics/prepare.json: split sizes, normalisation statistics, class balance of the train split."""
    m = {f"{name}/images": len(x) for name, (x, _) in splits.items()}
    m.update({f"mean/{c}": v for c, v in zip("rgb", info["mean"], strict=True)})
    m.update({f"std/{c}": v for c, v in zip("rgb", info["std"], strict=True)})
    counts = np.bincount(splits["train"][1].ravel(), minlength=info["num_classes"])
    for name, c in zip(info["class_names"], counts / counts.sum(), strict=True):
        m[f"train/fraction/{name}"] = float(c)
    return m


def main():
    p = stage.begin("prepare")
    splits, info = build(p["prepare"], p["seed"])
    with files.atomic_path(paths.PREPARED, directory=True) as tmp:
        for name, (images, targets) in splits.items():
            np.savez(tmp / paths.split(name).name, images=images, targets=targets)
        files.write_json(tmp / paths.DATASET.name, info)
    metrics = summary(splits, info)
    files.write_json(paths.metrics("prepare"), metrics)
    print(f"prepare: {info['sizes']} {info['source']} {info['task']} images of {info['image_size']}px "
          f"-> {paths.PREPARED}/, {paths.metrics('prepare')}")


if __name__ == "__main__":
    stage.run("prepare", main)
