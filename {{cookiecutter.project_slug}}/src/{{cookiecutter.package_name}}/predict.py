"""predict: the model on new images, decoded by the rules it was trained with.

    python -m {{ cookiecutter.package_name }}.predict INPUT... --out DIR              # the deployable, offline
    python -m {{ cookiecutter.package_name }}.predict photos/ --out DIR --model "models:/<name>@champion"
    make predict IN=photos/ OUT=predictions/

INPUT: image files or folders (searched recursively; hidden files and folders skipped), any size, kind and
orientation prepare accepts (images.py: every PIL mode, 16-bit, EXIF orientation). Each image is decoded and
fitted to the model's size exactly as prepare did, from the dataset description the model was trained on
(data/prepared/dataset.json for the local deployable, the run's config/dataset.json for a registry URI).
{%- if cookiecutter.task == 'segmentation' %}

Writes DIR/masks/<name>.png, the class index per pixel at the image's own size and (EXIF-upright)
orientation, and DIR/overlays/<name>.png, the classes in colour over the image.
{%- else %}

Writes DIR/predictions.csv: file, label, then the probability of each class.
{%- endif %}
A file that cannot be read is listed in DIR/errors.csv and the others are processed; the exit code is 1
when any file failed, else 0.
"""

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from {{ cookiecutter.package_name }} import files, images, params, paths, serving, stage, task, tracking

# Class colours of the overlays (class 0, background, is left clear).
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], np.uint8)


def find_inputs(inputs):
    """[(image path, output name without suffix)]: files as given, folders searched recursively, in order."""
    found = []
    for given in map(Path, inputs):
        if given.is_dir():
            found += [(p, p.relative_to(given).with_suffix("")) for p in sorted(given.rglob("*"))
                      if images.is_image(p) and not any(part.startswith(".") for part in p.relative_to(given).parts)]
        elif given.exists():
            found.append((given, Path(given.stem)))
        else:
            raise FileNotFoundError(f"{given}: no such file or folder; give image files or folders")
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(images.SUFFIXES)}, any case) in {', '.join(inputs)}")
    return found


def load_model(uri):
    """(fn: float32 numpy (B, 3, H, W) -> numpy logits, the dataset description it was trained on)."""
    if not uri.startswith("models:/"):
        folder = Path(uri)
        spec_path = folder / paths.DEPLOY_INFO.name
        if not spec_path.is_file():
            raise FileNotFoundError(f"{spec_path}: no deployable model; run `dvc repro optimize` (or dvc pull), or "
                                    "give --model models:/<name>@<alias>")
        if not paths.DATASET.is_file():
            raise FileNotFoundError(f"{paths.DATASET}: the decoding rules the model was trained with are missing; "
                                    "run `dvc repro prepare` (or dvc pull)")
        spec = files.read_json(spec_path)
        return serving.runner(folder / spec["file"], spec["runtime"]), files.read_json(paths.DATASET)
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri(params.load()["mlflow"]["tracking_uri"], tracking.repo_root()))
    model = mlflow.pyfunc.load_model(uri)
    info_path = mlflow.artifacts.download_artifacts(run_id=model.metadata.run_id,
                                                    artifact_path=f"config/{paths.DATASET.name}")
    return model.predict, files.read_json(info_path)


def decode(path, info):
    """(uint8 (3, S, S) model input, upright uint8 (H, W, 3) image) by prepare's rules."""
    upright, _ = images.read(path, "image", info.get("window"))
    fitted = images.fit(upright, info["image_size"], info.get("resize", "stretch"))
    return torch.from_numpy(fitted).permute(2, 0, 1), upright


def run_batch(fn, batch, info):
    """Model outputs for a batch of decoded images: per image, a class-index mask (S, S) or probabilities (C,)."""
    x = np.ascontiguousarray(torch.stack([b[0] for b in batch]).float().div_(255).numpy())  # (B, 3, S, S)
    logits = torch.from_numpy(np.asarray(fn(x))).float()
    if info["task"] == "segmentation":
        return task.predict(logits, info["task"], info["num_classes"]).to(torch.uint8).numpy()
    return torch.softmax(logits, 1).numpy()


def write_segmentation(out, name, mask, upright, info):
    """The mask at the image's own size and orientation, and an overlay of it on the image."""
    from PIL import Image

    full = images.unfit(mask, upright.shape[1], upright.shape[0], info.get("resize", "stretch"))
    for folder, arr in (("masks", full), ("overlays", overlay(upright, full))):
        target = out / folder / name.with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(target)


def overlay(image, mask, alpha=0.5):
    """uint8 (H, W, 3) image with each foreground class blended in its palette colour."""
    colours = PALETTE[mask % len(PALETTE)].astype(np.float32)
    blend = np.where(mask[..., None] > 0, (1 - alpha) * image + alpha * colours, image)
    return blend.round().astype(np.uint8)


def predict_all(fn, info, found, out, batch_size):
    """Run the model over every found file; returns (classification rows, [(file, error)])."""
    rows, errors, batch = [], [], []

    def flush():
        for (_, path, name, upright), result in zip(batch, run_batch(fn, batch, info), strict=True):
            if info["task"] == "segmentation":
                write_segmentation(out, name, result, upright, info)
            else:
                rows.append([str(path), info["class_names"][int(result.argmax())], *map(float, result)])
        batch.clear()

    for path, name in stage.checked(tqdm(found, desc="predict", unit="image", disable=None)):
        try:
            x, upright = decode(path, info)
        except images.DataError as e:
            errors.append((str(path), str(e)))
            continue
        batch.append((x, path, name, upright))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return rows, errors


def write_table(path, header, rows):
    with files.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m {{ cookiecutter.package_name }}.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--model", default=str(paths.DEPLOY_DIR),
                        help="a deployable folder (default %(default)s) or a registry URI models:/<name>@<alias>")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call (%(default)s)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: must be >= 1")
    found = find_inputs(args.inputs)
    fn, info = load_model(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, errors = predict_all(fn, info, found, args.out, args.batch_size)
    if info["task"] == "classification":
        write_table(args.out / "predictions.csv", ["file", "label", *info["class_names"]], rows)
    write_table(args.out / "errors.csv", ["file", "error"], errors)
    print(f"predict: {len(found) - len(errors)} of {len(found)} images -> {args.out}/")
    if errors:
        sys.exit(f"predict: {len(errors)} file(s) could not be read; see {args.out / 'errors.csv'}")


if __name__ == "__main__":
    stage.run("predict", main)
