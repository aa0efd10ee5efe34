"""End to end: bake, `dvc repro` with tiny params, and check DVC, MLflow and the logged model agree."""

import json
import subprocess

import mlflow
import numpy as np
import pytest
import yaml

from conftest import bake, project_env

TINY = {"prepare": {"image_size": 32, "synthetic_images": 40}, "train": {"epochs": 2, "batch_size": 8},
        "analyze": {"batch_size": 2, "warmup": 1, "runs": 5},
        "optimize": {"quantization": {"enabled": True, "calibration_images": 8},
                     "latency": {"batch_size": 2, "warmup": 1, "runs": 5}},
        "robustness": {"subset": 8, "epsilons": [0, 4], "declared_epsilon": 4, "pgd": {"steps": 2, "step_size": 0.5},
                       "corruptions": ["gaussian_noise", "jpeg"], "severities": [1], "bootstrap_resamples": 50}}


def sh(project, *cmd):
    result = subprocess.run(cmd, cwd=project, env=project_env(project), capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def runs(project):
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    return mlflow.search_runs(search_all_experiments=True, output_format="list", order_by=["start_time ASC"])


@pytest.fixture(scope="module", params=["segmentation", "classification"])
def pipeline(request, tmp_path_factory):
    """A baked project, committed with tiny params, after one `dvc repro`."""
    project = bake(tmp_path_factory.mktemp("e2e"), task=request.param)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(project, "git", "commit", "-qam", "tiny params")
    out = sh(project, "dvc", "repro")
    return request.param, project, out


def test_dvc_metrics_written(pipeline):
    task, project, out = pipeline
    assert all(f"Running stage '{stage}'" in out for stage in ("prepare", "train", "analyze", "optimize", "robustness"))
    metrics = json.loads(sh(project, "dvc", "metrics", "show", "--json"))
    files = next(iter(metrics.values()))["data"]
    metric = "dice" if task == "segmentation" else "accuracy"
    train = files["metrics/train.json"]["data"]
    assert 0 <= train[f"test/{metric}"] <= 1 and train["epochs_run"] == 2
    assert files["metrics/prepare.json"]["data"]["train/images"] == 28
    assert files["metrics/analyze.json"]["data"]["params/total"] > 0
    assert files["metrics/optimize.json"]["data"]["fp32/speedup_batch_1"] == 1.0
    robust = files["metrics/robustness.json"]["data"]
    assert robust[f"pgd/eps0/{metric}"] == pytest.approx(robust[f"clean/{metric}"])
    assert robust["security/fail"] == 0
    plots = json.loads(sh(project, "dvc", "plots", "show", "--json"))["data"]
    assert {"loss", metric, "plots/train/curves.png", "plots/train/predictions.png"} <= set(plots)


def test_mlflow_run_finished_with_params_metrics_and_artifacts(pipeline):
    task, project, _ = pipeline
    ref = json.loads((project / "metrics/mlflow.json").read_text())
    (run,) = runs(project)
    assert run.info.run_id == ref["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.params["prepare.image_size"] == "32"
    assert run.data.tags["dvc_stage"] == "train" and run.data.tags["task"] == task
    analyzed = json.loads((project / "metrics/analyze.json").read_text())
    assert run.data.metrics["analyze/latency/batch_1/p50_ms"] == pytest.approx(analyzed["latency/batch_1/p50_ms"])
    client = mlflow.MlflowClient()
    metric = "dice" if task == "segmentation" else "accuracy"
    history = client.get_metric_history(run.info.run_id, f"val/{metric}")
    assert [m.step for m in history] == [1, 2]
    artifacts = {f.path for folder in client.list_artifacts(run.info.run_id)
                 for f in client.list_artifacts(run.info.run_id, folder.path)}
    assert {"checkpoint/model.safetensors", "history/history.json", "config/params.yaml", "plots/curves.png",
            "plots/predictions.png", "metrics/train.json", "analyze/analyze.html",
            "optimize/optimize.md", "robustness/robustness.html"} <= artifacts
    # Artifacts live under the project root, where the sqlite store is, not in a working directory.
    assert run.info.artifact_uri.startswith((project / "mlruns").as_uri())


def test_logged_model_loads_and_predicts(pipeline):
    task, project, _ = pipeline
    ref = json.loads((project / "metrics/mlflow.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    model = mlflow.pyfunc.load_model(ref["model_uri"])
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    y = np.asarray(model.predict(x))
    assert y.shape == ((2, 1, 32, 32) if task == "segmentation" else (2, 3))
    assert np.isfinite(y).all()


def test_second_repro_runs_nothing(pipeline):
    _, project, _ = pipeline
    out = sh(project, "dvc", "repro")
    assert "Running stage" not in out
    assert "up to date" in sh(project, "dvc", "status")


def test_exp_run_records_the_new_lr(pipeline):
    _, project, _ = pipeline
    sh(project, "dvc", "exp", "run", "-S", "lr=0.0123")
    run = runs(project)[-1]
    assert run.data.params["lr"] == "0.0123" and run.info.status == "FINISHED"
    assert run.data.tags.get("dvc_exp_name")
    assert yaml.safe_load((project / "params.yaml").read_text())["lr"] == 0.0123


def test_temp_experiment_lands_in_the_project_store(pipeline):
    # --temp runs in a copy under .dvc/tmp/exps that DVC deletes afterwards: the run and its artifacts must
    # still be in the project's store.
    _, project, _ = pipeline
    sh(project, "dvc", "exp", "run", "--temp", "-S", "lr=0.0042")
    run = runs(project)[-1]
    assert run.data.params["lr"] == "0.0042" and run.info.status == "FINISHED"
    client = mlflow.MlflowClient()
    assert client.list_artifacts(run.info.run_id, "checkpoint")
    assert run.info.artifact_uri.startswith((project / "mlruns").as_uri())
