"""A team set-up: `mlflow server` on a PostgreSQL backend store with proxied artifacts, a baked project pointed
at it through the cookiecutter option, the pipeline run, and everything (runs, artifacts, the registered model)
found on the server. The project trains on image folders of its own, as a user's, so this is also where a
changed raw image is shown to rerun prepare and everything after it."""

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import BIN, STAGES, TINY, bake, project_env, sh


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin():
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return Path(found).resolve().parent if found else None


def _wait(url, proc, seconds=120):
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, f"{url} did not come up"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def server():
    pg = _pg_bin()
    if pg is None:
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql; scripts/test.sh does)")
    # initdb refuses to run as root; the cluster belongs to the postgres user, in a directory it can reach.
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
    if as_pg:
        shutil.chown(root, "postgres")
    data, port = root / "data", _port()
    subprocess.run([*as_pg, pg / "initdb", "-D", data, "-U", "postgres", "--auth=trust"], check=True,
                   capture_output=True)
    subprocess.run([*as_pg, pg / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    mlflow_server = None
    try:
        subprocess.run([pg / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"], check=True)
        http_port = _port()
        artifacts = Path(tempfile.mkdtemp(prefix="mlartifacts-"))
        mlflow_server = subprocess.Popen(
            [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(http_port),
             "--backend-store-uri", f"postgresql+psycopg://postgres@127.0.0.1:{port}/mlflow",
             "--artifacts-destination", str(artifacts)],
            env=project_env(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        uri = f"http://127.0.0.1:{http_port}"
        _wait(f"{uri}/health", mlflow_server)
        yield uri, artifacts
    finally:
        if mlflow_server:
            mlflow_server.terminate()
            mlflow_server.wait(30)
        subprocess.run([*as_pg, pg / "pg_ctl", "-D", data, "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


SECRETS = ("hunter2-basic-auth", "hunter2-in-the-uri", "hunter2-pgpass")


def _secrets_found(project, outputs, client, run_ids, artifacts):
    """Where any of SECRETS shows up: command output, git history, project files, MLflow params / tags /
    artifacts (server side) of the runs."""
    places = {"command output": "\n".join(outputs),
              "git history": sh(project, "git", "log", "-p", "--all"),
              **{str(p): p.read_bytes().decode(errors="replace") for p in project.rglob("*")
                 if p.is_file() and ".git" not in p.parts},
              **{str(p): p.read_bytes().decode(errors="replace") for p in artifacts.rglob("*") if p.is_file()}}
    for run_id in run_ids:
        run = client.get_run(run_id)
        places[f"run {run_id} params and tags"] = json.dumps([run.data.params, run.data.tags])
    return sorted(f"{where}: ...{text[max(0, text.index(s) - 200):text.index(s) + 40]}"
                  for where, text in places.items() for s in SECRETS if s in text)


def test_pipeline_against_an_mlflow_server_on_postgresql(server, tmp_path):
    uri, artifacts = server
    # Classification here: with test_pipeline.py (segmentation), both tasks run the whole pipeline for real.
    project = bake(tmp_path, task="classification", mlflow_tracking_uri=uri)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    params["train"]["epochs"] = 1
    params["prepare"].update(source="folder", num_classes=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The user's own data, laid out and tracked as data/raw/README.md says: one folder of PNGs per class.
    rng = np.random.default_rng(0)
    for name, low in (("dark", 0), ("bright", 128)):
        (project / "data/raw" / name).mkdir(parents=True)
        for i in range(20):
            pixels = rng.integers(low, low + 128, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(project / f"data/raw/{name}/{i:03d}.png")
    sh(project, "dvc", "add", "data/raw/dark", "data/raw/bright")
    # Credentials the supported way, in the environment (this server has no auth and ignores them): they must
    # not land anywhere.
    creds = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": SECRETS[0], "PGPASSWORD": SECRETS[2]}
    first = sh(project, "dvc", "repro", env=creds)
    assert "folder classification images" in first
    assert not (project / "mlflow.db").exists()  # nothing went to the embedded store

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    ref = json.loads((project / "metrics/mlflow.json").read_text())
    run = client.get_run(ref["run_id"])
    assert run.info.status == "FINISHED" and "robustness/score" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"checkpoint", "report", "robustness"}
    assert any(artifacts.rglob("model.html"))  # proxied: stored by the server, not by the client
    champion = client.get_model_version_by_alias(project.name, "champion")
    assert champion.run_id == run.info.run_id and champion.tags["run_id"] == run.info.run_id
    # The model card as the version's description: within PostgreSQL's VARCHAR(5000) for it
    assert champion.description.startswith("# Model report") and len(champion.description) <= 5000
    assert run.data.metrics["register/energy_kwh"] > 0 and "analyze/explain/images" in run.data.metrics
    security = json.loads((project / "reports/robustness.json").read_text())["security"]
    assert next(f for f in security if f["check"] == "tracking-config")["status"] == "PASS"  # loopback

    # One raw image changed: prepare and every stage after it run again, and the new run records the new data.
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(project / "data/raw/bright/000.png")
    # This time a password written into MLFLOW_TRACKING_URI (sent as basic auth): printed masked, stored nowhere.
    in_uri = uri.replace("http://", f"http://alice:{SECRETS[1]}@")
    out = sh(project, "dvc", "repro", env={"MLFLOW_TRACKING_URI": in_uri, "PGPASSWORD": SECRETS[2]})
    assert "http://alice:***@127.0.0.1" in out
    assert [line for line in out.splitlines() if line.startswith("Running stage")] == [
        f"Running stage '{stage}':" for stage in STAGES]
    rerun = client.get_run(json.loads((project / "metrics/mlflow.json").read_text())["run_id"])
    assert rerun.info.run_id != run.info.run_id and rerun.data.tags["data_sha256"] != run.data.tags["data_sha256"]
    assert "Running stage" not in sh(project, "dvc", "repro")
    assert _secrets_found(project, [first, out], client, [run.info.run_id, rerun.info.run_id], artifacts) == []
