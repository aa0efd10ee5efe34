"""The model on image files, shared by predict and challenge: finding the inputs, loading a deployable folder or a
registry model with the decoding rules it was trained with, decoding and batching by those rules, and overlays.

    >>> overlay(np.zeros((1, 2, 3), np.uint8), np.array([[0, 1]])).tolist()
    [[[0, 0, 0], [115, 12, 38]]]
"""

import csv
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from {{ cookiecutter.package_name }}.lib import decoding, files, paths, serving, stage, store, task

# Class colours of the overlays (class 0, background, is left clear).
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


def load_model(uri, mlflow_cfg):
    """(fn: float32 numpy (B, 3, H, W) -> numpy logits, the dataset description it was trained on, the drift
    reference statistics of its training split or None when the model has none)."""
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

    mlflow.set_tracking_uri(store.tracking_uri(mlflow_cfg["tracking_uri"], store.repo_root()))
    model = mlflow.pyfunc.load_model(uri)
    run_id = model.metadata.run_id
    info_path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"config/{paths.DATASET.name}")
    try:  # runs logged before drift checks existed have none
        reference = files.read_json(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"config/{paths.REFERENCE.name}"))
    except (MlflowException, OSError):
        reference = None
    return model.predict, files.read_json(info_path), reference


def decode(path, info):
    """(uint8 (3, S, S) model input, upright uint8 (H, W, 3) image) by prepare's rules."""
    upright, _ = decoding.read(path, "image", info.get("window"))
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


def decoded_batches(found, decode_one, batch_size, errors, desc):
    """Lists of up to batch_size `decode_one(path, name)` results over the found files, in order; a file that
    cannot be read goes to `errors` as (file, reason) and the rest go on."""
    batch = []
    for path, name in stage.checked(tqdm(found, desc=desc, unit="image", disable=None)):
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
