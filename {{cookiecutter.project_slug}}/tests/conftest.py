"""A scratch copy of this project with tiny params, for tests that run the stages themselves."""

import io
import json
import os
import socket
import zipfile
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from PIL import Image

from {{ cookiecutter.package_name }} import prepare, train
from {{ cookiecutter.package_name }}.lib import corruptions, files, ingest, models, paths

PARAMS = Path(__file__).parents[1] / "params.yaml"
TASK = yaml.safe_load(PARAMS.read_text())["prepare"]["task"]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """tmp_path as the working directory, with tiny params and prepare's outputs."""
    p = yaml.safe_load(PARAMS.read_text())
    p["prepare"].update(image_size=32, synthetic_images=30)
    p["train"].update(epochs=2, batch_size=8)
    p["analyze"].update(batch_size=2, warmup=1, runs=5)
    p["optimize"]["quantization"]["calibration_images"] = 8
    p["optimize"]["latency"].update(batch_size=2, warmup=1, runs=5, remeasure=0,  # 5 runs are noise: tested apart
                                    reliability={"max_p90_p50": 1000, "max_interval_width": 1000})
    p["robustness"].update(subset=8, epsilons=[0, 4], declared_epsilon=4, pgd={"steps": 2, "step_size": 0.5},
                           corruptions=["gaussian_noise", "jpeg"], severities=[1], bootstrap_resamples=50)
    p["mlflow"]["tracking_uri"] = "sqlite:///mlflow.db"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    prepare.main()
    yield tmp_path
    mlflow.end_run()


@pytest.fixture
def trained(project):
    train.main()
    return project


@pytest.fixture
def task():
    return TASK


@pytest.fixture
def runs():
    """runs(root): the MLflow runs in root's embedded store."""
    def search(root):
        mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
        return mlflow.search_runs(search_all_experiments=True, output_format="list")
    return search


@pytest.fixture
def closed_port():
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def deployable(project):
    """An untrained model of the prepared data's shape as the deployable (predict's contract, not its skill)."""
    info = json.loads(paths.DATASET.read_text())
    torch.manual_seed(0)
    model, model_args = models.for_data({"architecture": "resnet18" if info["task"] == "classification" else "Unet",
                                         "encoder": "resnet18", "pretrained": False}, info)
    paths.DEPLOY_DIR.mkdir(parents=True)
    shape = [3, info["image_size"], info["image_size"]]
    models.save_checkpoint(paths.DEPLOY_DIR / "model.safetensors", model.eval(), model_args, input_shape=shape)
    files.write_json(paths.DEPLOY_INFO, {"variant": "fp32", "file": "model.safetensors", "runtime": "pytorch",
                                         "input_shape": shape, "model_args": model_args})
    return info


def make_pngs(folder, info, seed, corruption=None):
    """PNGs from the synthetic generator at the training size (a seed prepare never used), optionally under a
    corruptions.py corruption at severity 5."""
    images = ingest.make_synthetic(info["task"], 16, info["image_size"], info["num_classes"], seed)[0]
    if corruption:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        x = corruptions.corrupt(x, corruption, 5, torch.Generator().manual_seed(0))
        images = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture
def synthetic_pngs():
    return make_pngs


# Security tests: a pickle that runs code when loaded, and archives of given members.
class Evil:
    def __reduce__(self):  # unpickling this runs a shell command
        return (os.system, ("echo pwned",))


def zip_of(members):  # {name: bytes} -> the bytes of a zip holding them
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()
