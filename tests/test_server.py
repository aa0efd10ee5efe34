"""A team set-up: `mlflow server` (the generated project's `make server`) with basic-auth logins, a PostgreSQL backend
store and proxied artifacts in an S3 bucket, a baked project pointed at it through the cookiecutter options with its
DVC remote in another bucket, the pipeline run, and everything (runs, artifacts, the registered model) found on the
server. The S3 server is moto's, standing in for AWS S3 or MinIO: endpoint and keys reach every client through the
AWS_* environment variables only. The project trains on image folders of its own, as a user's, so this is also where
a changed raw image is shown to rerun prepare and everything after it."""

import base64
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import types
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import mlflow
import numpy as np
import psutil
import pytest
import yaml
from PIL import Image

from conftest import BIN, STAGES, TINY, bake, free_port, project_env, sh, wait_until_up

pytestmark = pytest.mark.services

# alice's password (in the environment), bob's (in the tracking URI), a database password, the S3 secret key, the
# server admin's password and the server's session key: none may land anywhere but where it is given.
SECRETS = ("hunter2-basic-auth", "hunter2-in-the-uri", "hunter2-pgpass", "hunter2-s3-secret-key", "hunter2-admin",
           "hunter2-flask-key")


# The team server as `make server AUTH=1` runs it here; the generated compose.yaml must configure the same
# (tests/test_container.py).
SERVER_VARIABLES = ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_AUTH_CONFIG_PATH",
                    "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "AWS_ENDPOINT_URL",
                    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
ARTIFACTS = "s3://mlflow/artifacts"
BUCKETS = ("mlflow", "dvc")
AUTH_INI = ("[mlflow]\ndefault_permission = READ\ndatabase_uri = {}\nadmin_username = admin\n"
            "auth_cache_ttl_seconds = 60\n")


def _pg_bin():
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return Path(found).resolve().parent if found else None


def _status(url, user=None, password=None):
    """The HTTP status of a GET, sent with basic auth when a user is given."""
    request = urllib.request.Request(url)
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def _stop(proc):
    """Stop a process started in its own session and everything it started (make -> mlflow server -> uvicorn
    workers): make itself exits at once, the server a little later (killed after 5 s: its store is PostgreSQL's)."""
    if proc is None:
        return
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == proc.pid]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(group, timeout=5)
    for p in alive:
        p.kill()
    proc.wait(30)


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pg = _pg_bin()
    if pg is None:
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql; scripts/test.sh does)")
    # initdb refuses to run as root; the cluster belongs to the postgres user, in a directory it can reach.
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
    if as_pg:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    subprocess.run([*as_pg, pg / "initdb", "-D", data, "-U", "postgres", "--auth=trust"], check=True,
                   capture_output=True)
    subprocess.run([*as_pg, pg / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    s3_server = mlflow_server = None
    try:
        db = f"postgresql+psycopg://postgres@127.0.0.1:{port}"
        for name in ("mlflow", "mlflow_auth"):  # the tracking store, and the basic-auth app's users
            subprocess.run([pg / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name], check=True)
        s3_port, http_port = free_port(), free_port()
        s3_server = subprocess.Popen([BIN / "moto_server", "-H", "127.0.0.1", "-p", str(s3_port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        s3_env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}", "AWS_ACCESS_KEY_ID": "team-key",
                  "AWS_SECRET_ACCESS_KEY": SECRETS[3]}
        wait_until_up(f"{s3_env['AWS_ENDPOINT_URL']}/moto-api/", s3_server)
        s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=s3_env["AWS_ENDPOINT_URL"],
                          aws_access_key_id="team-key", aws_secret_access_key=SECRETS[3])
        for bucket in BUCKETS:
            s3.create_bucket(Bucket=bucket)
        uri = f"http://127.0.0.1:{http_port}"
        project = bake(tmp_path_factory.mktemp("server"), task="classification", mlflow_tracking_uri=uri,
                       dvc_remote="s3://dvc/store")
        # The project's own recipe, configured as the README says: MLflow's environment variables, the auth app's
        # settings file (a password check costs ~0.2 s of CPU: cached), the secrets in the server's environment only.
        # Two workers instead of four on these 2 cores.
        (root / "auth.ini").write_text(AUTH_INI.format(f"{db}/mlflow_auth"))
        env = {"MLFLOW_PORT": str(http_port), "MLFLOW_WORKERS": "2", "MLFLOW_BACKEND_STORE_URI": f"{db}/mlflow",
               "MLFLOW_ARTIFACTS_DESTINATION": ARTIFACTS,
               "MLFLOW_AUTH_CONFIG_PATH": str(root / "auth.ini"),
               "MLFLOW_AUTH_ADMIN_PASSWORD": SECRETS[4], "MLFLOW_FLASK_SERVER_SECRET_KEY": SECRETS[5], **s3_env}
        assert set(SERVER_VARIABLES) <= set(env)  # what compose.yaml is checked against
        command = (["make", "server", "RUN=", "AUTH=1"] if shutil.which("make") else  # the same recipe without make
                   [BIN / "mlflow", "server", "--host", "127.0.0.1", "--app-name", "basic-auth"])
        with open(root / "server.log", "wb") as log:
            mlflow_server = subprocess.Popen(command, cwd=project, env=project_env(project, **env), stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        wait_until_up(f"{uri}/health", mlflow_server, log=root / "server.log")
        yield types.SimpleNamespace(uri=uri, port=http_port, project=project, s3_env=s3_env, s3=s3,
                                    log=root / "server.log",
                                    dump=lambda name: subprocess.run(
                                        [pg / "pg_dump", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name],
                                        check=True, capture_output=True, text=True).stdout)
    finally:
        _stop(mlflow_server)
        _stop(s3_server)
        subprocess.run([*as_pg, pg / "pg_ctl", "-D", data, "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _files(folder):
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file() and ".git" not in p.parts}


def _bucket(s3, bucket):
    """Every object of an S3 bucket, by s3:// URL."""
    return {f"s3://{bucket}/{o['Key']}": s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", [])}


def _secrets_found(places):
    """Where any of SECRETS shows up in `places` (name -> bytes; searched as bytes: most are models and data)."""
    return sorted(f"{where}: ...{data[max(0, data.index(s) - 200):data.index(s) + 40].decode(errors='replace')}"
                  for where, data in places.items() for s in (s.encode() for s in SECRETS) if s in data)


def _login(monkeypatch, user, password):
    """This process's MLflow client as `user` (MLflow reads the variables at each request)."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


def test_pipeline_against_a_team_server_postgresql_s3_and_logins(server, tmp_path, monkeypatch):
    uri, project = server.uri, server.project
    # Classification here: with test_pipeline.py (segmentation), both tasks run the whole pipeline for real.
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    params["train"]["epochs"] = 1
    params["prepare"].update(source="folder", num_classes=2)
    # Each MLflow request may take a third of this: the server passes the 45 MB model on to the bucket before it
    # answers the upload, longer than the default's 5 s on a busy 2-core machine (the README says so too).
    params["mlflow"]["timeout_s"] = 60
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The user's own data, laid out and tracked as data/raw/README.md says: one folder of PNGs per class.
    rng = np.random.default_rng(0)
    for name, low in (("dark", 0), ("bright", 128)):
        (project / "data/raw" / name).mkdir(parents=True)
        for i in range(20):
            pixels = rng.integers(low, low + 128, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(project / f"data/raw/{name}/{i:03d}.png")
    sh(project, "dvc", "add", "data/raw/dark", "data/raw/bright")

    # `make server` listens on loopback only, and answers nothing but /health without a login.
    listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port}
    assert listening == {"127.0.0.1"}
    assert _status(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    # The admin (password from the server's environment) creates the pipeline's user; she then owns what she creates.
    from mlflow.server import get_app_client  # here: it imports the whole server (~1 s), for this test only

    _login(monkeypatch, "admin", SECRETS[4])
    users = get_app_client("basic-auth", tracking_uri=uri)
    users.create_user("alice", SECRETS[0])
    # Credentials the supported way, in the environment: they must not land anywhere.
    creds = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": SECRETS[0], "PGPASSWORD": SECRETS[2],
             **server.s3_env}
    first = sh(project, "dvc", "repro", env=creds)
    assert "folder classification images" in first
    assert not (project / "mlflow.db").exists()  # nothing went to the embedded store

    _login(monkeypatch, "alice", SECRETS[0])
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    ref = json.loads((project / "metrics/mlflow.json").read_text())
    run = client.get_run(ref["run_id"])
    assert run.info.status == "FINISHED" and "robustness/score" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"checkpoint", "report", "robustness"}
    # Proxied: the server stored them in its bucket (the pipeline had S3 keys for DVC, but MLflow never used them).
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert any(key.endswith("/report/model.html") for key in _bucket(server.s3, "mlflow"))
    champion = client.get_model_version_by_alias(project.name, "champion")
    assert champion.run_id == run.info.run_id and champion.tags["run_id"] == run.info.run_id
    # The model card as the version's description: within PostgreSQL's VARCHAR(5000) for it
    assert champion.description.startswith("# Model report") and len(champion.description) <= 5000
    assert run.data.metrics["register/energy_kwh"] > 0 and "analyze/explain/images" in run.data.metrics
    security = json.loads((project / "reports/robustness.json").read_text())["security"]
    assert next(f for f in security if f["check"] == "tracking-config")["status"] == "PASS"  # loopback

    # A colleague: bob may read everything (default_permission), and alice lets him edit her experiment and model.
    _login(monkeypatch, "admin", SECRETS[4])
    users.create_user("bob", SECRETS[1])
    _login(monkeypatch, "alice", SECRETS[0])
    users.grant_user_permission("bob", "experiment", run.info.experiment_id, "EDIT")
    users.grant_user_permission("bob", "registered_model", project.name, "EDIT")
    assert _status(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", "bob", "wrong-password") == 401
    # One raw image changed: prepare and every stage after it run again, and the new run records the new data.
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(project / "data/raw/bright/000.png")
    # This time the password is written into MLFLOW_TRACKING_URI (MLflow sends it as basic auth): printed masked,
    # stored nowhere.
    in_uri = uri.replace("http://", f"http://bob:{SECRETS[1]}@")
    out = sh(project, "dvc", "repro", env={"MLFLOW_TRACKING_URI": in_uri, "PGPASSWORD": SECRETS[2], **server.s3_env})
    assert "http://bob:***@127.0.0.1" in out
    assert [line for line in out.splitlines() if line.startswith("Running stage")] == [
        f"Running stage '{stage}':" for stage in STAGES]
    rerun = client.get_run(json.loads((project / "metrics/mlflow.json").read_text())["run_id"])
    assert rerun.info.run_id != run.info.run_id and rerun.data.tags["data_sha256"] != run.data.tags["data_sha256"]
    assert "Running stage" not in sh(project, "dvc", "repro")

    # The champion loads from the registry through the server with pickle disabled, in a process without S3 keys:
    # the artifacts come through the server's proxy.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    for var in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    model = mlflow.pyfunc.load_model(f"models:/{project.name}@champion")
    images = np.load(project / "data/prepared/test/images.npy", mmap_mode="r")  # (N, H, W, 3) uint8
    logits = model.predict(np.ascontiguousarray(images[:2].transpose(0, 3, 1, 2), np.float32) / 255)
    assert isinstance(logits, np.ndarray) and logits.shape == (2, 2) and np.isfinite(logits).all()

    # The data and models on the project's S3 remote (the dvc_remote option): a colleague's clone pulls them and has
    # nothing to run, with the same metrics.
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "pipeline results")
    assert "pushed" in sh(project, "dvc", "push", env=server.s3_env)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(project), str(clone)], check=True)
    pulled = sh(clone, "dvc", "pull", env=server.s3_env)
    assert "Running stage" not in sh(clone, "dvc", "repro")
    assert sh(clone, "dvc", "metrics", "diff").strip() == ""
    assert (clone / "models/model.safetensors").read_bytes() == (project / "models/model.safetensors").read_bytes()

    # (The DVC bucket and the clone hold copies of the project's files, searched here.)
    texts = {"command output": "\n".join([first, out, pulled]), "git history": sh(project, "git", "log", "-p", "--all"),
             "server log": server.log.read_text(errors="replace"), "tracking database": server.dump("mlflow"),
             "users database (password hashes only)": server.dump("mlflow_auth")}
    for run_id in (run.info.run_id, rerun.info.run_id):
        data = client.get_run(run_id).data
        texts[f"run {run_id} params and tags"] = json.dumps([data.params, data.tags])
    places = {**{k: v.encode() for k, v in texts.items()}, **_files(project), **_bucket(server.s3, "mlflow")}
    assert _secrets_found(places) == []


def test_make_server_says_in_one_line_what_stops_the_logins(tmp_path):
    """`make server AUTH=1` as a user first runs it: MLflow's own refusals (here: no admin password on a users' store
    without the admin), said in one line with the fix instead of MLflow's page of traceback."""
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    project = bake(tmp_path, task="classification", init_git=False)
    (tmp_path / "auth.ini").write_text(AUTH_INI.format(f"sqlite:///{tmp_path}/auth.db"))
    env = project_env(project, MLFLOW_PORT=str(free_port()), MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path}/mlflow.db",
                      MLFLOW_AUTH_CONFIG_PATH=str(tmp_path / "auth.ini"), MLFLOW_FLASK_SERVER_SECRET_KEY=SECRETS[5])
    result = subprocess.run(["make", "server", "RUN=", "AUTH=1"], cwd=project, env=env, capture_output=True, text=True,
                            timeout=300)
    said = [line for line in (result.stdout + result.stderr).splitlines() if not line.startswith("make: ***")]
    assert result.returncode != 0 and len(said) == 1, result.stdout + result.stderr
    assert said[0].startswith("make server: MLflow Authentication needs a password to create the admin user 'admin'")
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in said[0] and not (tmp_path / "mlflow.db").exists()  # no server started
