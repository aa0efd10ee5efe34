import os
import subprocess
import sys
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }} import tracking


def test_tracking_uri_is_absolute_against_the_repository_root(tmp_path):
    assert tracking.tracking_uri("sqlite:///mlflow.db", tmp_path, env={}) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.tracking_uri("sqlite:////abs/x.db", tmp_path, env={}) == "sqlite:////abs/x.db"
    assert tracking.tracking_uri("sqlite:///a.db", tmp_path, env={"MLFLOW_TRACKING_URI": "http://h:5000"}) \
        == "http://h:5000"


def test_unreachable_tracking_server_fails_fast(closed_port):
    with pytest.raises(ConnectionError, match="unreachable.*mlflow.enabled: false"):
        tracking.check_reachable(f"http://127.0.0.1:{closed_port}", timeout=2)


def test_run_name():
    assert tracking.run_name("Unet", "resnet18", False, now=0).startswith("unet_resnet18_random_19")
    assert tracking.run_name("resnet18", None, True, now=0).startswith("resnet18_pretrained_")


def test_parallel_stage_starts_on_a_fresh_store_all_succeed(project, runs):
    # Queue workers and parallel stages open the store at once; MLflow's migrations on a fresh sqlite file
    # race without tracking.store_lock.
    code = ("import mlflow; from {{ cookiecutter.package_name }} import params, tracking; "
            "cfg = params.load()['mlflow']; e = tracking.set_experiment(cfg, tracking.repo_root()); "
            "mlflow.start_run(experiment_id=e); mlflow.end_run()")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=project, env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert [r.info.status for r in runs(project)] == ["FINISHED"] * 4


def test_context_tags_record_a_dirty_workspace_and_a_plain_repro(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.context_tags(env={})["git_commit"] == "none"  # not a repository
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    for name in ("train.py", "dvc.lock"):
        Path(name).write_text("a")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    clean = tracking.context_tags(env={})
    assert clean["git_dirty"] == "false" and clean["dvc_exp_name"] == tracking.NOT_AN_EXPERIMENT
    Path("dvc.lock").write_text("rewritten by the pipeline")  # not a change of the user's
    assert tracking.context_tags(env={})["git_dirty"] == "false"
    Path("train.py").write_text("changed")
    dirty = tracking.context_tags(env={"DVC_EXP_NAME": "exp-1"})
    assert dirty["git_dirty"] == "true" and dirty["git_dirty_files"] == "train.py"
    assert dirty["dvc_exp_name"] == "exp-1"
