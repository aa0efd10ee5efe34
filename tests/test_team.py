"""Two people on one project: experiments shared through a git remote, a DVC remote and an MLflow server; and the
pull-request report a reviewer reads."""

import json
import subprocess

import mlflow
import pytest
import yaml

from conftest import BIN, TINY, bake, free_port, project_env, sh, wait_until_up

# Commits in the tests do not depend on the machine's git configuration.
IDENTITY = {"GIT_AUTHOR_NAME": "Alice", "GIT_AUTHOR_EMAIL": "alice@example.org", "GIT_COMMITTER_NAME": "Alice",
            "GIT_COMMITTER_EMAIL": "alice@example.org"}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with an SQLite backend and proxied artifacts; its URI. One worker and no job
    runner (MLflow's default starts four workers and a job queue of seven processes, 20 s on a busy machine)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    server = subprocess.Popen([BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                               "--artifacts-destination", str(root / "artifacts")],
                              cwd=root, env=project_env(root, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{uri}/health", server)
        yield uri
    finally:
        server.terminate()
        server.wait(30)


def _tiny(project, **sections):
    """TINY params (one epoch: the least that trains), plus `sections` updates, written to params.yaml."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in {**TINY, **sections}.items():
        params[section].update(values)  # shallow, as TINY: a nested dict given here is given whole
    params["train"]["epochs"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _experiment(shown, name):
    """The experiment called `name` in `dvc exp show --json`: {rev, name, data} of its row."""
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment["revs"]:
                if rev.get("name") == name:
                    return rev
    raise AssertionError(f"no experiment {name!r} in dvc exp show: {json.dumps(shown)[:3000]}")


@pytest.mark.services
def test_an_experiment_shared_through_git_dvc_and_mlflow_remotes(mlflow_server, tmp_path):
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", remote], check=True)
    alice = bake(tmp_path / "alice", task="classification", mlflow_tracking_uri=mlflow_server,
                 dvc_remote=str(tmp_path / "dvc-remote"))
    # The least that trains and runs every stage: TINY, one epoch, the fp32 model as the only deployable variant.
    _tiny(alice, optimize={**TINY["optimize"], "quantization": {**TINY["optimize"]["quantization"], "enabled": False},
                           "pruning": {"enabled": False, "amount": 0.5}})
    sh(alice, "git", "commit", "-qam", "tiny params", env=IDENTITY)
    sh(alice, "git", "remote", "add", "origin", str(remote))
    sh(alice, "git", "push", "-q", "origin", "main")
    bob = tmp_path / "bob"
    subprocess.run(["git", "clone", "-q", remote, bob], check=True, capture_output=True)

    # Alice runs an experiment (the whole pipeline, one MLflow run on the server) and pushes it: its git ref to
    # origin, its data and models to the DVC remote.
    sh(alice, "dvc", "exp", "run", "-n", "alice-lr", "-S", "lr=0.003", env=IDENTITY)
    sh(alice, "dvc", "exp", "push", "origin", "alice-lr")
    # A workspace experiment leaves its results in Alice's workspace.
    ran = {p.relative_to(alice).as_posix(): json.loads(p.read_text()) for p in (alice / "metrics").rglob("*.json")}
    assert len(ran) == 13  # every figure of each of the 6 stages, their 6 headline files, the run (mlflow.json)

    # Bob pulls it and sees it, with its MLflow run, which is on the server.
    sh(bob, "dvc", "exp", "pull", "origin", "alice-lr")
    shown = _experiment(json.loads(sh(bob, "dvc", "exp", "show", "--json")), "alice-lr")["data"]
    run_id = shown["metrics"]["metrics/mlflow.json"]["data"]["run_id"]
    assert shown["params"]["params.yaml"]["data"]["lr"] == 0.003
    assert {f: d["data"] for f, d in shown["metrics"].items()} == {  # DVC's table: the headline files and the run
        f: v for f, v in ran.items() if f.startswith("metrics/headline/") or f == "metrics/mlflow.json"}
    table = sh(bob, "dvc", "exp", "show", "--md")  # what Bob reads: the experiment's row carries the run id
    assert next(line for line in table.splitlines() if "alice-lr" in line).count(run_id) == 1
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["dvc_exp_name"] == "alice-lr"
    assert run.data.params["lr"] == "0.003"

    # The pull-request report of the experiment against main: its params, its metrics, its run on the server.
    sh(bob, "python", "-m", f"{alice.name.replace('-', '_')}.pr_report", "--head", "alice-lr")
    report = (bob / "reports/pr/report.md").read_text()
    assert "| params.yaml | lr | 0.001 | 0.003 |" in report
    assert f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run_id})" in report
    assert "| plots/train/curves.png | — | ![branch](plots/branch/plots/train/curves.png) |" in report

    # Bob takes it into his workspace: data and models from the DVC remote, and nothing left to run.
    sh(bob, "dvc", "exp", "apply", "alice-lr")
    sh(bob, "dvc", "pull")
    out = sh(bob, "dvc", "repro")
    assert "Running stage" not in out, out
    assert "Data and pipelines are up to date" in out, out
    assert {f: json.loads((bob / f).read_text()) for f in ran} == ran
    experiment = client.get_experiment_by_name(yaml.safe_load((bob / "params.yaml").read_text())["mlflow"][
        "experiment"])
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]  # bob ran nothing


def _commit(project, message, params, metrics, plot):
    """params.yaml updated with `params` ({section: {key: value}} or {key: value}), metrics files written whole,
    a curves image, committed: what a branch holds after `dvc exp apply` + `git commit`."""
    p = yaml.safe_load((project / "params.yaml").read_text())
    for key, value in params.items():
        if isinstance(value, dict):
            p[key].update(value)
        else:
            p[key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for name, values in metrics.items():
        (project / "metrics").mkdir(exist_ok=True)
        (project / f"metrics/{name}.json").write_text(json.dumps(values))
    (project / "plots/train").mkdir(parents=True, exist_ok=True)
    (project / "plots/train/curves.png").write_bytes(plot)
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", message, env=IDENTITY)


@pytest.mark.fast
def test_pull_request_report_names_what_the_branch_changed(tmp_path):
    project = bake(tmp_path, task="classification")
    gates = ("min_quality", "max_latency_ms")
    _commit(project, "base", {"mlflow": {"tracking_uri": "http://alice:hunter2@127.0.0.1:5000"}}, {
        "train": {"test/accuracy": 0.5, "test/loss": 1.25, "epochs_run": 2},
        "register": {"passed": 0, **{f"gate/{g}/passed": int(g != "min_quality") for g in gates}},
        "mlflow": {"enabled": True, "run_id": "a" * 32, "experiment_id": "1"}}, b"base curves")
    sh(project, "git", "checkout", "-qb", "feature")
    _commit(project, "branch", {"lr": 0.003, "train": {"epochs": 20}}, {
        "train": {"test/accuracy": 0.75, "test/loss": 1.25, "epochs_run": 20},
        "register": {"passed": 1, **{f"gate/{g}/passed": 1 for g in gates}},
        "mlflow": {"enabled": True, "run_id": "b" * 32, "experiment_id": "1"}}, b"branch curves")
    package = project.name.replace("-", "_")
    out = sh(project, "python", "-m", f"{package}.pr_report", "--base", "main", "--head", "feature")
    report = (project / "reports/pr/report.md").read_text()
    assert report in out and "main (" in report and "feature (" in report
    assert "| params.yaml | lr | 0.001 | 0.003 | +0.002 (+200.0%) |" in report
    assert "| params.yaml | train.epochs | 12 | 20 | +8 (+66.7%) |" in report
    assert "| metrics/train.json | test/accuracy | 0.5 | 0.75 | +0.25 (+50.0%) |" in report
    assert "| metrics/train.json | epochs_run | 2 | 20 | +18 (+900.0%) |" in report
    assert "test/loss" not in report and "### Params (2 changed)" in report  # unchanged values left out
    assert "| all gates | FAIL | pass |" in report and "| min_quality | FAIL | pass |" in report
    assert "| max_latency_ms | pass | pass |" in report
    assert f"[{'a' * 32}](http://127.0.0.1:5000/#/experiments/1/runs/{'a' * 32})" in report
    assert "hunter2" not in out  # the URI's password: never in the report
    plots = project / "reports/pr/plots"
    assert (plots / "base/plots/train/curves.png").read_bytes() == b"base curves"
    assert (plots / "branch/plots/train/curves.png").read_bytes() == b"branch curves"
    assert "![branch](plots/branch/plots/train/curves.png)" in report
    assert sh(project, "git", "status", "--porcelain") == ""  # the report is git-ignored

    # Two names of one commit (DVC would merge them into one "feature, HEAD" entry): both sides still read.
    same = sh(project, "python", "-m", f"{package}.pr_report", "--base", "feature", "--head", "HEAD")
    assert "No params changed." in same and "| all gates | pass | pass |" in same
    bad = sh(project, "python", "-m", f"{package}.pr_report", "--base", "origin/main", ok=False)
    assert bad.strip().splitlines()[-1].startswith("pr_report: ValueError: --base origin/main: no such git revision")
