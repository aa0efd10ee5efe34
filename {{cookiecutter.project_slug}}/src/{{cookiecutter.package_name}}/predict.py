"""predict: the model on new images, decoded by the rules it was trained with.

    python -m {{ cookiecutter.package_name }}.predict INPUT... --out DIR              # the deployable, offline
    python -m {{ cookiecutter.package_name }}.predict photos/ --out DIR --model "models:/<name>@champion"
    python -m {{ cookiecutter.package_name }}.predict photos/ --out DIR --fail-on-drift      # a batch job's alarm
    make predict IN=photos/ OUT=predictions/

INPUT: image files or folders (searched recursively; hidden files and folders skipped), any size, kind and
orientation prepare accepts (lib/decoding.py: every PIL mode, 16-bit, EXIF orientation). Each image is decoded and
fitted to the model's size exactly as prepare did, from the dataset description the model was trained on
(data/prepared/dataset.json for the local deployable, the run's config/dataset.json for a registry URI).
{%- if cookiecutter.task == 'segmentation' %}

Writes DIR/masks/<name>.png, the class index per pixel at the image's own size and (EXIF-upright)
orientation, as a palette PNG (PASCAL VOC's convention): the palette index is the class, so
`np.asarray(PIL.Image.open(path))` gives the classes and prepare reads it as a mask, while a viewer shows each
class in colour (background black; inference.PALETTE); and DIR/overlays/<name>.png, the classes in colour
over the image.
{%- else %}

Writes DIR/predictions.csv: file, label, then the probability of each class.
{%- endif %}
A file that cannot be read, or over params' prepare.max_image_pixels (the limit prepare applies; a guard against
decompression bombs), is listed in DIR/errors.csv and the others are processed.
{%- if cookiecutter.task == 'segmentation' %} Two inputs of one name (x.png and x.jpg,
or a/x.png and b/x.png given as files) would be written to one mask: refused, naming both, before anything is written.
{%- endif %}

Drift: the new images are tested against the statistics of the split the model was trained on
(data/prepared/reference.json for the local deployable, the run's config/reference.json for a registry URI;
drift.py says which tests, params' predict.drift the threshold). DIR/drift.json holds the evidence, a line
of the output the verdict; drift is a warning, or with --fail-on-drift exit code 3 (DRIFT_EXIT).

Two models on the same images: python -m {{ cookiecutter.package_name }}.challenge.

Exit codes: 0; 1 when any file could not be read, or on a one-line error (e.g. --fail-on-drift for a model
without reference statistics); 3 with --fail-on-drift when the images drift.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from {{ cookiecutter.package_name }}.lib import decoding, drift, files, inference, params, paths, stage

DRIFT_EXIT = 3  # --fail-on-drift: distinct from 1 (unreadable files, errors) and 2 (argparse's usage errors)


def write_segmentation(out, name, mask, upright, info):
    """The mask at the image's own size and orientation (a palette PNG), and an overlay of it on the image."""
    from PIL import Image

    full = decoding.unfit(mask, upright.shape[1], upright.shape[0], info.get("resize", "stretch"))
    for folder, image in (("masks", inference.mask_image(full)),
                          ("overlays", Image.fromarray(inference.overlay(upright, full)))):
        target = out / folder / f"{name}.png"  # name has no suffix left: a.b.png -> a.b.png, not a.png
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target)


def predict_all(fn, info, found, out, batch_size, stats, max_pixels):
    """Run the model over every found file, adding each decoded image to `stats` (drift.Statistics); returns
    (classification rows, [(file, error)]). An image over max_pixels is one of the errors."""
    rows, errors = [], []

    def decode_one(path, name):
        x, upright = inference.decode(path, info, max_pixels)
        stats.add(x.permute(1, 2, 0).numpy(), (upright.shape[1], upright.shape[0]))  # fitted (S, S, 3), (W, H)
        return x, path, name, upright

    for batch in inference.decoded_batches(found, decode_one, batch_size, errors, "predict"):
        x = inference.model_input([b[0] for b in batch])
        for (_, path, name, upright), result in zip(batch, inference.run_batch(fn, x, info), strict=True):
            if info["task"] == "segmentation":
                write_segmentation(out, name, result, upright, info)
            else:
                rows.append([str(path), info["class_names"][int(result.argmax())], *map(float, result)])
    return rows, errors


def check_drift(reference, stats, rows, info, cfg, out):
    """The drift evidence for the images predicted, written to out/drift.json."""
    if stats.seen == 0:
        evidence = {"checked": False, "reason": "no image could be read"}
    elif reference is None:
        evidence = {"checked": False, "reason": f"the model has no reference statistics ({paths.REFERENCE}, or "
                                                f"config/{paths.REFERENCE.name} in its MLflow run); rerun dvc repro"}
    else:
        counts = None
        if info["task"] == "classification":  # the predicted labels' balance, reported beside the tests
            counts = np.bincount([info["class_names"].index(r[1]) for r in rows], minlength=len(info["class_names"]))
        evidence = drift.check(reference, stats, cfg["alpha"], cfg["min_effect"], predicted_counts=counts)
    files.write_json(out / "drift.json", evidence)
    return evidence


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m {{ cookiecutter.package_name }}.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--model", default=str(paths.DEPLOY_DIR),
                        help="a deployable folder (default %(default)s) or a registry URI models:/<name>@<alias>")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call (%(default)s)")
    parser.add_argument("--fail-on-drift", action="store_true",
                        help=f"exit {DRIFT_EXIT} when the images drift from the model's training images")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: must be >= 1")
    p = params.load()
    inference.check_out(args.out)
    found = inference.find_inputs(args.inputs)
    fn, info, reference = inference.load_model(args.model, p["mlflow"])
    if info["task"] == "segmentation":  # one mask per name: x.png and x.jpg would overwrite each other
        inference.check_unique_names(found, args.out / "masks", ".png")
    if reference is None and args.fail_on_drift:
        raise FileNotFoundError(f"--fail-on-drift: {args.model} has no drift reference statistics ("
                                f"{paths.REFERENCE}, or config/{paths.REFERENCE.name} in its run); rerun dvc repro")
    args.out.mkdir(parents=True, exist_ok=True)
    stats = drift.Statistics(drift.sample_mask(len(found), seed=0))  # features of at most drift.SAMPLE images
    rows, errors = predict_all(fn, info, found, args.out, args.batch_size, stats, p["prepare"]["max_image_pixels"])
    if info["task"] == "classification":
        inference.write_table(args.out / "predictions.csv", ["file", "label", *info["class_names"]], rows)
    inference.write_table(args.out / "errors.csv", ["file", "error"], errors)
    evidence = check_drift(reference, stats, rows, info, p["predict"]["drift"], args.out)
    print(f"predict: {len(found) - len(errors)} of {len(found)} images -> {args.out}/")
    print(f"predict: {drift.summary(evidence)} -> {args.out / 'drift.json'}",
          file=sys.stderr if evidence.get("drift") else sys.stdout)
    if args.fail_on_drift and evidence.get("drift"):
        print(f"predict: exit {DRIFT_EXIT} (--fail-on-drift)", file=sys.stderr)
        sys.exit(DRIFT_EXIT)
    if errors:
        sys.exit(f"predict: {len(errors)} file(s) could not be read; see {args.out / 'errors.csv'}")


if __name__ == "__main__":
    stage.run("predict", main)
