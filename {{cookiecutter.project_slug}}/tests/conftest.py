"""A scratch copy of this project with tiny params, for tests that run the stages themselves."""

import socket
from pathlib import Path

import mlflow
import pytest
import yaml

from {{ cookiecutter.package_name }} import prepare, train

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
