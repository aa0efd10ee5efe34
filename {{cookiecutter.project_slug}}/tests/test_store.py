import contextlib
import http.server
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import pytest

from {{ cookiecutter.package_name }}.lib import store


def test_tracking_uri_is_absolute_against_the_repository_root(tmp_path):
    assert store.tracking_uri("sqlite:///mlflow.db", tmp_path, env={}) == f"sqlite:///{tmp_path}/mlflow.db"
    assert store.tracking_uri("sqlite:////abs/x.db", tmp_path, env={}) == "sqlite:////abs/x.db"
    assert store.tracking_uri("sqlite:///a.db", tmp_path, env={"MLFLOW_TRACKING_URI": "http://h:5000"}) \
        == "http://h:5000"


def test_unreachable_tracking_server_fails_fast(closed_port):
    with pytest.raises(ConnectionError, match="unreachable.*mlflow.enabled: false"):
        store.check_reachable(f"http://127.0.0.1:{closed_port}", timeout=2)


@pytest.mark.process
def test_parallel_stage_starts_on_a_fresh_store_all_succeed(project, runs):
    # Queue workers and parallel stages open the store at once; MLflow's migrations on a fresh sqlite file
    # race without store.store_lock.
    code = ("import mlflow; from {{ cookiecutter.package_name }}.lib import params, store; "
            "cfg = params.load()['mlflow']; e = store.set_experiment(cfg, store.repo_root()); "
            "mlflow.start_run(experiment_id=e); mlflow.end_run()")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=project, env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert [r.info.status for r in runs(project)] == ["FINISHED"] * 4


@pytest.mark.parametrize("uri,shown", [
    ("postgresql+psycopg://mlflow:hunter2@db:5432/mlflow", "postgresql+psycopg://mlflow:***@db:5432/mlflow"),
    ("http://alice:hunter2@host:5000", "http://alice:***@host:5000"),
    ("https://host/?token=hunter2&x=1", "https://host/?token=***&x=1"),
    ("http://alice@host:5000", "http://alice@host:5000"),
    ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
])
def test_credentials_are_masked_wherever_a_uri_is_shown(uri, shown):
    assert store.mask(uri) == shown
    assert store.has_credentials(uri) == (uri != shown)


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
        store.check_sqlite(tmp_path / "mlflow.db")


def test_a_store_locked_by_another_process_is_named_within_the_timeout(tmp_path):
    db = _sqlite(tmp_path / "mlflow.db", "create table t (id integer)")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("begin exclusive")
    try:
        with pytest.raises(ConnectionError, match="locked by another process"):
            store.check_sqlite(db, timeout=0.5)
    finally:
        holder.close()


def test_a_fresh_or_current_store_passes(tmp_path, runs):
    store.check_sqlite(tmp_path / "new" / "mlflow.db")  # not there yet: MLflow creates it
    runs(tmp_path)  # MLflow makes a store at its current schema
    store.check_sqlite(tmp_path / "mlflow.db")


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
            store.check_reachable(f"http://u:hunter2@127.0.0.1:{server.server_address[1]}", timeout=2)
        with pytest.raises(ConnectionError, match=r"http://u:\*\*\*@127.0.0.1:\d+ is unreachable \(timed out\)"):
            store.check_reachable(f"http://u:hunter2@127.0.0.1:{silent.getsockname()[1]}", timeout=1)
    finally:
        server.shutdown()
        silent.close()


class _Missing(_Failing):
    def do_GET(self):  # noqa: N802
        self.send_error(404)


def test_a_server_that_is_not_mlflow_is_named_with_the_address_to_check():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Missing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ConnectionError, match=r"http://u:\*\*\*@127.0.0.1:\d+/wrong answers HTTP 404 \(not found\) "
                                                  r"at /health and at its REST API.*host, port and path prefix"):
            store.check_reachable(f"http://u:hunter2@127.0.0.1:{server.server_address[1]}/wrong", timeout=2)
    finally:
        server.shutdown()


def test_make_server_names_a_missing_package_of_the_server_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "flask_wtf", None)  # None: `import flask_wtf` fails, as when not installed
    assert store.server_problem(True) == (
        "make server: logins (AUTH=1, MLflow's basic-auth app) need Flask-WTF, of the server extra: uv sync --frozen "
        "--extra server (pip: pip install -e '.[server]'); docs/team.md")
    monkeypatch.setitem(sys.modules, "psycopg", None)
    uri = "postgresql+psycopg://u:pw@db/mlflow"
    assert store.server_problem(False, {"MLFLOW_BACKEND_STORE_URI": uri}).startswith(
        "make server: postgresql+psycopg://u:***@db/mlflow needs psycopg, of the server extra: uv sync")
    assert store.server_problem(False, {}) is None


def _make_server_check(tmp_path, **env):
    """`make server AUTH=1`'s first line in a fresh interpreter (MLflow's auth app reads its settings as it
    imports): (exit code, output)."""
    (tmp_path / "auth.ini").write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///"
                                       f"{tmp_path}/auth.db\nadmin_username = admin\n")
    code = "import sys; from {{ cookiecutter.package_name }}.lib import store; sys.exit(store.server_problem(True))"
    base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**base, "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
                                 "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"), **env})
    return result.returncode, result.stdout + result.stderr


@pytest.mark.process
def test_make_server_says_in_one_line_what_would_stop_the_logins(tmp_path):
    secret = {"MLFLOW_FLASK_SERVER_SECRET_KEY": "k"}
    for env, message in (
            ({}, "make server: A static secret key needs to be set"),
            (secret, r"make server: MLflow Authentication needs a password to create the admin user 'admin', but "
                     r"none is configured.*MLFLOW_AUTH_ADMIN_PASSWORD"),
            # a password refused is said otherwise than none
            ({**secret, "MLFLOW_AUTH_ADMIN_PASSWORD": "short"}, r"make server: The configured password for the admin "
                                                                r"user 'admin' is invalid: Password must be")):
        code, out = _make_server_check(tmp_path, **env)
        assert code == 1 and re.fullmatch(message + r".*\n", out, re.S) and out.count("\n") == 1, out
    code, out = _make_server_check(tmp_path, **secret, MLFLOW_AUTH_ADMIN_PASSWORD="hunter2-long-enough")
    assert code == 0 and "Created admin user 'admin'" in out, out
    # The admin exists now: a configured password that is not its own is a warning (MLflow ignores it).
    code, out = _make_server_check(tmp_path, **secret, MLFLOW_AUTH_ADMIN_PASSWORD="another-long-password")
    assert code == 0 and "warning: the admin password configured" in out and "not the password of 'admin'" in out


def test_an_unreachable_database_is_named_masked(closed_port):
    with pytest.raises(ConnectionError) as e:
        store.check_database(f"postgresql://me:hunter2@127.0.0.1:{closed_port}/mlflow", timeout=2)
    assert "postgresql://me:***@127.0.0.1" in str(e.value) and "hunter2" not in str(e.value)


def test_http_retries_are_bounded_unless_the_environment_says_otherwise(monkeypatch):
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    store.bound_requests(15)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"


def test_a_deleted_experiment_is_named_with_the_fix(tmp_path):
    cfg = {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "gone", "timeout_s": 5}
    store.set_experiment(cfg, tmp_path)
    mlflow.delete_experiment(mlflow.get_experiment_by_name("gone").experiment_id)
    with pytest.raises(ValueError, match="'gone'.*is deleted: restore it"):
        store.set_experiment(cfg, tmp_path)
