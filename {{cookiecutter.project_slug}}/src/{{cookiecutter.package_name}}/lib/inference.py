"""The model on image files, shared by predict and challenge: finding the inputs, loading a deployable folder or a
registry model with the decoding rules it was trained with, decoding and batching by those rules, and overlays.

    >>> overlay(np.zeros((1, 2, 3), np.uint8), np.array([[0, 1]])).tolist()
    [[[0, 0, 0], [115, 12, 38]]]
"""

import csv
import re
from pathlib import Path

import numpy as np
import torch

from {{ cookiecutter.package_name }}.lib import decoding, files, paths, serving, stage, store, task

# Class colours of the overlays (class 0, background, is left clear) and of the mask PNGs (background black).
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], np.uint8)


def find_inputs(inputs):
    """[(image path, output name without suffix)]: files as given, folders searched recursively, in order."""
    found = []
    for given in map(Path, inputs):
        if given.is_dir():
            found += [(p, p.relative_to(given).with_suffix("")) for p in sorted(given.rglob("*"))
                      if decoding.is_image(p) and not any(part.startswith(".") for part in p.relative_to(given).parts)]
        elif given.exists():
            found.append((given, Path(given.stem)))
        else:
            raise FileNotFoundError(f"{given}: no such file or folder; give image files or folders")
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(decoding.SUFFIXES)}, any case) in {', '.join(inputs)}")
    return found


def check_out(out):
    """--out: a folder (made if missing) that can be written, checked before any model loads."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out}: is a file, not a folder; give a folder (made if missing), or move "
                                 "the file aside")
    files.check_writable(out, directory=True)


def check_unique_names(found, folder, suffix):
    """Refuse two inputs that would be written under one name in `folder` (x.png and x.jpg both -> x.png): the
    second would silently replace the first. One file given twice (a folder and a file in it) writes the same."""
    first = {}
    for path, name in found:
        if name in first and first[name].resolve() != path.resolve():
            raise ValueError(f"{first[name]} and {path} would both be written as {folder / name}{suffix} (outputs "
                             "are named by the file name without its suffix); rename one, or predict them in "
                             "separate runs with different --out folders")
        first[name] = path


# The model URIs load_model takes besides a folder path (MLflow's models:/ forms; a logged model's id is m-<hex>).
MODEL_URI_FORMS = ("models:/<name>@<alias>", "models:/<name>/<version>", "models:/<name>/latest", "models:/m-<id>")
VALID_MODEL_URI = re.compile(r"models:/(?:[^/:]+@[\w-]+|[^/:@]+/(?:\d+|latest|[A-Za-z]+)|m-[0-9a-f]{32})")


def check_model_uri(uri):
    """A deployable folder path or a models:/ URI of a form MLflow resolves; any other URI refused by its scheme."""
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):/", uri)  # two letters at least: a Windows drive (C:/) is a path
    if scheme and scheme[1] != "models":
        raise ValueError(f"{uri}: unsupported scheme {scheme[1]}:; give a deployable folder (a path) or a registry "
                         f"URI: {', '.join(MODEL_URI_FORMS)}")
    if scheme and not VALID_MODEL_URI.fullmatch(uri):
        raise ValueError(f"{uri}: not a valid model URI; valid forms: {', '.join(MODEL_URI_FORMS)}")


def load_model(uri, mlflow_cfg):
    """(fn: float32 numpy (B, 3, H, W) -> numpy logits, the dataset description it was trained on, the drift
    reference statistics of its training split or None when the model has none)."""
    check_model_uri(uri)
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
        reference = files.read_json(paths.REFERENCE) if paths.REFERENCE.is_file() else None
        return serving.runner(folder / spec["file"], spec["runtime"]), files.read_json(paths.DATASET), reference
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking = store.tracking_uri(mlflow_cfg["tracking_uri"], store.repo_root())
    store.bound_requests(mlflow_cfg["timeout_s"])
    store.check_reachable(tracking, mlflow_cfg["timeout_s"])  # down, failing, or not MLflow at that address
    mlflow.set_tracking_uri(tracking)
    model = mlflow.pyfunc.load_model(uri)
    run_id = model.metadata.run_id
    info_path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"config/{paths.DATASET.name}")
    try:  # runs logged before drift checks existed have none
        reference = files.read_json(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"config/{paths.REFERENCE.name}"))
    except (MlflowException, OSError):
        reference = None
    return model.predict, files.read_json(info_path), reference


def decode(path, info, max_pixels=None):
    """(uint8 (3, S, S) model input, upright uint8 (H, W, 3) image) by prepare's rules; an image over
    max_pixels (prepare.max_image_pixels, the project's one limit) is refused by decoding.read."""
    upright, _ = decoding.read(path, "image", info.get("window"), max_pixels)
    fitted = decoding.fit(upright, info["image_size"], info.get("resize", "stretch"))
    return torch.from_numpy(fitted).permute(2, 0, 1), upright


def model_input(decoded):
    """float32 numpy (B, 3, S, S) in [0, 1] from a list of uint8 (3, S, S) tensors."""
    return np.ascontiguousarray(torch.stack(decoded).float().div_(255).numpy())


def run_batch(fn, x, info):
    """Model outputs for a batch x (model_input): per image, a class-index mask (S, S) or probabilities (C,)."""
    logits = torch.from_numpy(np.asarray(fn(x))).float()
    if info["task"] == "segmentation":
        return task.predict(logits, task.Task.of(info)).to(torch.uint8).numpy()
    return torch.softmax(logits, 1).numpy()


def overlay(image, mask, alpha=0.5):
    """uint8 (H, W, 3) image with each foreground class blended in its palette colour."""
    colours = PALETTE[mask % len(PALETTE)].astype(np.float32)
    blend = np.where(mask[..., None] > 0, (1 - alpha) * image + alpha * colours, image)
    return blend.round().astype(np.uint8)


def mask_image(mask):
    """A (H, W) class-index mask as a palette ("P") PIL image, PASCAL VOC's convention: each pixel's index is
    its class (np.asarray and prepare's mask reading give the classes back), and the palette shows the classes
    in the overlays' colours, background black, where 0/1 grey values would look black in a viewer."""
    from PIL import Image

    image = Image.fromarray(np.asarray(mask, np.uint8))
    image.putpalette(np.resize(PALETTE, (256, 3)).ravel().tolist())  # an L image becomes P; class k: PALETTE[k % 10]
    return image


def decoded_batches(found, decode_one, batch_size, errors, desc):
    """Lists of up to batch_size `decode_one(path, name)` results over the found files, in order; a file that
    cannot be read goes to `errors` as (file, reason) and the rest go on."""
    batch = []
    for path, name in stage.checked(stage.progress(found, desc, unit="image")):
        try:
            batch.append(decode_one(path, name))
        except decoding.DataError as e:
            errors.append((str(path), str(e)))
            continue
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_table(path, header, rows):
    with files.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
