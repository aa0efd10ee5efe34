import contextlib
import http.server
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import pytest

from {{ cookiecutter.package_name }}.lib import tracking


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


@pytest.mark.process
def test_parallel_stage_starts_on_a_fresh_store_all_succeed(project, runs):
    # Queue workers and parallel stages open the store at once; MLflow's migrations on a fresh sqlite file
    # race without tracking.store_lock.
    code = ("import mlflow; from {{ cookiecutter.package_name }}.lib import params, tracking; "
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


# --- credentials, and stores checked before work ----------------------------------------------------------------

@pytest.mark.parametrize("uri,shown", [
    ("postgresql+psycopg://mlflow:hunter2@db:5432/mlflow", "postgresql+psycopg://mlflow:***@db:5432/mlflow"),
    ("http://alice:hunter2@host:5000", "http://alice:***@host:5000"),
    ("https://host/?token=hunter2&x=1", "https://host/?token=***&x=1"),
    ("http://alice@host:5000", "http://alice@host:5000"),
    ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
])
def test_credentials_are_masked_wherever_a_uri_is_shown(uri, shown):
    assert tracking.mask(uri) == shown
    assert tracking.has_credentials(uri) == (uri != shown)


def _sqlite(path, *sql):
    with contextlib.closing(sqlite3.connect(path)) as con:
        for statement in sql:
            con.execute(statement)
        con.commit()
    return path


@pytest.mark.parametrize("make,message", [
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: p.write_bytes(b"not a database at all"), "not an SQLite database"),
    (lambda p: _sqlite(p, "create table customers (id integer)"), "another application"),
    (lambda p: _sqlite(p, "create table experiments (id integer)", "create table alembic_version (version_num text)",
                       "insert into alembic_version values ('0123456789ab')"), "newer MLflow"),
])
def test_a_store_mlflow_cannot_use_is_named_before_work(tmp_path, make, message):
    make(tmp_path / "mlflow.db")
    with pytest.raises((ValueError, OSError), match=message):
        tracking.check_sqlite(tmp_path / "mlflow.db")


def test_a_store_locked_by_another_process_is_named_within_the_timeout(tmp_path):
    db = _sqlite(tmp_path / "mlflow.db", "create table t (id integer)")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("begin exclusive")
    try:
        with pytest.raises(ConnectionError, match="locked by another process"):
            tracking.check_sqlite(db, timeout=0.5)
    finally:
        holder.close()


def test_a_fresh_or_current_store_passes(tmp_path, runs):
    tracking.check_sqlite(tmp_path / "new" / "mlflow.db")  # not there yet: MLflow creates it
    runs(tmp_path)  # MLflow makes a store at its current schema
    tracking.check_sqlite(tmp_path / "mlflow.db")


class _Failing(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_error(503)

    def log_message(self, *args):
        pass


def test_a_failing_or_silent_server_is_named_in_seconds():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts connections, never answers
    try:
        with pytest.raises(ConnectionError, match="answers HTTP 503"):
            tracking.check_reachable(f"http://u:hunter2@127.0.0.1:{server.server_address[1]}", timeout=2)
        with pytest.raises(ConnectionError, match=r"http://u:\*\*\*@127.0.0.1:\d+ is unreachable \(timed out\)"):
            tracking.check_reachable(f"http://u:hunter2@127.0.0.1:{silent.getsockname()[1]}", timeout=1)
    finally:
        server.shutdown()
        silent.close()


def test_an_unreachable_database_is_named_masked(closed_port):
    with pytest.raises(ConnectionError) as e:
        tracking.check_database(f"postgresql://me:hunter2@127.0.0.1:{closed_port}/mlflow", timeout=2)
    assert "postgresql://me:***@127.0.0.1" in str(e.value) and "hunter2" not in str(e.value)


def test_http_retries_are_bounded_unless_the_environment_says_otherwise(monkeypatch):
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    tracking.bound_requests(15)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"


def test_a_deleted_experiment_is_named_with_the_fix(tmp_path):
    cfg = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "gone", "timeout_s": 5}
    tracking.set_experiment(cfg, tmp_path)
    mlflow.delete_experiment(mlflow.get_experiment_by_name("gone").experiment_id)
    with pytest.raises(ValueError, match="'gone'.*is deleted: restore it"):
        tracking.set_experiment(cfg, tmp_path)


def test_energy_is_logged_into_the_run_off_by_a_param_and_nothing_goes_into_the_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    ids = []
    for enabled in (True, False):
        with tracking.closing(mlflow.start_run, "stage_x", {"energy": {"enabled": enabled, "country": "FRA"}}) as run:
            sum(i * i for i in range(200_000))  # some work to measure
        ids.append(run.info.run_id)
    on, off = (mlflow.get_run(i) for i in ids)
    m, t = on.data.metrics, on.data.tags
    assert on.info.status == "FINISHED"
    assert m["stage_x/energy_kwh"] > 0 and m["stage_x/emissions_kg_co2eq"] > 0 and m["stage_x/energy_duration_s"] > 0
    # France's grid in codecarbon's offline table: far below a coal grid's ~0.8 kg CO2eq / kWh
    assert m["stage_x/emissions_kg_co2eq"] / m["stage_x/energy_kwh"] < 0.2
    assert t["stage_x.energy_method"].startswith("CPU: ") and "; GPU: " in t["stage_x.energy_method"]
    assert t["energy_country"] == "FRA"
    assert not any(k.endswith("energy_kwh") for k in off.data.metrics)
    assert {p.name for p in tmp_path.iterdir()} <= {"mlflow.db", "mlflow.db.lock", "mlruns"}  # no emissions.csv

    class Failed:  # codecarbon swallows its own errors: a tracker that failed has no data at stop
        def stop(self):
            pass

    with mlflow.start_run() as run:
        tracking.log_energy(Failed(), "stage_x", "FRA")
    failed = mlflow.get_run(run.info.run_id).data
    assert failed.tags["stage_x.energy_method"].startswith("not measured") and not failed.metrics


def test_an_unknown_country_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"mlflow.energy.country='XYZ'.*enabled: false"):
        tracking.check_country("XYZ")


def test_an_unknown_country_stops_the_stage_before_its_run_opens(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    opened = []
    with pytest.raises(ValueError, match="mlflow.energy.country='XYZ'"):
        with tracking.closing(lambda: opened.append(mlflow.start_run()), "stage_x",
                              {"energy": {"enabled": True, "country": "XYZ"}}):
            pass
    assert opened == [] and mlflow.active_run() is None
