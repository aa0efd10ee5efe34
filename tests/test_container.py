"""The generated Dockerfile, built with podman (`make image`) on a Debian base made here with debootstrap (no image
registry is reachable), then used as the README says: the pipeline on tiny params in the image with the checkout
mounted, with the same metrics as outside it; the serving target answering REST; and what the image must not hold.
compose.yaml is checked against the team set-up of tests/test_server.py.

Warm path: the base image's tarball is cached under ~/.cache/pytorch-dvc-mlflow (debootstrap runs once per
machine), the build borrows the host's uv cache (`-v`), and podman keeps the image layers between runs: the locked
environment's layer is rebuilt only when uv.lock changes. A cold first build takes minutes (docs/performance.md)."""

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import BIN, TINY, bake, free_port, sh

TOOLS = ("podman", "runc", "debootstrap", "make")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
pytestmark = [pytest.mark.services, pytest.mark.skipif(bool(MISSING), reason=f"no {', '.join(MISSING)} (Debian: "
                                                                          "apt-get install podman runc debootstrap; "
                                                                          "scripts/test.sh does)")]

# As root on these machines podman needs Debian's runc (crun fails on hybrid cgroups) and limits the sandbox allows.
PODMAN = ["--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytorch-dvc-mlflow"
BASE = "localhost/pytorch-dvc-mlflow/debian-bookworm-python3"
IMAGE = "localhost/pytorch-dvc-mlflow-test"
# The team stack's secrets, in the project's .env while the image is built: none may land in the image.
SECRETS = {"POSTGRES_PASSWORD": "hunter2-ctr-pg", "AWS_ACCESS_KEY_ID": "team-key",
           "AWS_SECRET_ACCESS_KEY": "hunter2-ctr-s3", "MLFLOW_ADMIN_PASSWORD": "hunter2-ctr-admin",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "hunter2-ctr-flask", "MODEL_SERVER_USERNAME": "admin",
           "MODEL_SERVER_PASSWORD": "hunter2-ctr-admin"}
# Metric keys that measure the machine (timings, energy, memory) or name a run: left out of the comparison. The rest
# (the data's statistics, every loss, accuracy and interval, parameter and FLOP counts, sizes, robustness, the gate
# verdicts) must be equal: the image's environment is uv.lock, the versions of this venv (tests/test_lock.py).
MACHINE = ("time", "latency", "_ms", "speedup", "throughput", "energy", "emissions", "rss", "reliable", "run_id",
           "experiment_id", "model_uri", "p50", "p90", "iqr", "version")


def podman(*args, ok=True, **kwargs):
    result = subprocess.run(["podman", *args], capture_output=True, text=True, **kwargs)
    assert (result.returncode == 0) == ok, f"podman {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _base_image():
    """A Debian bookworm base with python3 (3.11), from Debian's packages: debootstrap once, the tarball cached."""
    if subprocess.run(["podman", "image", "exists", BASE]).returncode == 0:
        return
    tarball = CACHE / "debian-bookworm-python3.tar"
    if not tarball.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="debootstrap-", dir="/tmp"))
        try:
            subprocess.run(["debootstrap", "--variant=minbase", "--include=python3", "bookworm", root], check=True,
                           capture_output=True)
            partial = tarball.with_suffix(".partial")
            with open(partial, "wb") as out:
                subprocess.run(["tar", "-C", root, "-c", "."], stdout=out, check=True)
            partial.rename(tarball)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    podman("import", "-q", str(tarball), BASE)


def _uv_image():
    """uv's image stands for ghcr.io/astral-sh/uv: the uv binary of this venv at its root."""
    version = subprocess.run([BIN / "uv", "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    name = f"localhost/pytorch-dvc-mlflow/uv:{version}"
    if subprocess.run(["podman", "image", "exists", name]).returncode != 0:
        folder = Path(tempfile.mkdtemp())
        for tool in ("uv", "uvx"):
            shutil.copy(BIN / tool, folder / tool)
        subprocess.run(["tar", "-C", folder, "-cf", folder / "uv.tar", "uv", "uvx"], check=True)
        podman("import", "-q", str(folder / "uv.tar"), name)
        shutil.rmtree(folder)
    return name


def _tiny(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    params["train"]["epochs"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _quality(project):
    """{file: {key: value}} of metrics/*.json without the keys that measure the machine (MACHINE)."""
    return {p.name: {k: v for k, v in _flat(json.loads(p.read_text())).items()
                     if not any(word in k.lower() for word in MACHINE)}
            for p in sorted((project / "metrics").glob("*.json"))}


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A project run outside any container (this venv), then `make image` from its checkout, outputs and all: the
    .dockerignore is what keeps them out."""
    _base_image()
    outside = bake(tmp_path_factory.mktemp("outside"), task="classification")
    _tiny(outside)
    example = (outside / ".env.example").read_text()
    for key, value in SECRETS.items():
        example = example.replace(next(line for line in example.splitlines() if line.startswith(f"{key}=")),
                                  f"{key}={value}")
    (outside / ".env").write_text(example)
    (outside / ".venv/bin").mkdir(parents=True)  # a stand-in for the developer's environment
    (outside / ".venv/pyvenv.cfg").write_text("home = /usr/bin\n")
    started = time.monotonic()
    sh(outside, "dvc", "repro")
    outside_s = time.monotonic() - started
    uv_cache = subprocess.run([BIN / "uv", "cache", "dir"], capture_output=True, text=True, check=True).stdout.strip()
    ca = os.environ.get("SSL_CERT_FILE")
    build_args = [*PODMAN, "--build-arg", f"BASE_IMAGE={BASE}", "--build-arg", f"UV_IMAGE={_uv_image()}",
                  "-v", f"{uv_cache}:/uv-cache", "--build-arg", "UV_CACHE_DIR=/uv-cache",
                  *(["-v", f"{ca}:/etc/ssl/certs/build-ca.crt:ro", "--build-arg",
                     "CA_BUNDLE=/etc/ssl/certs/build-ca.crt"] if ca else [])]
    started = time.monotonic()
    build = subprocess.run(["make", "image", "CONTAINER=podman", f"IMAGE={IMAGE}",
                            f"BUILD_ARGS={' '.join(build_args)}"], cwd=outside, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-5000:] + build.stderr[-5000:]
    print(f"outside pipeline {outside_s:.0f} s, make image {time.monotonic() - started:.0f} s")
    return outside


def test_image_runs_as_non_root_and_holds_no_secret_venv_or_data(built):
    assert podman("run", "--rm", *PODMAN, IMAGE, "id", "-u").strip() != "0"
    assert podman("run", "--rm", *PODMAN, f"{IMAGE}-serve", "id", "-u").strip() != "0"
    config = json.loads(podman("image", "inspect", f"{IMAGE}-serve"))[0]
    assert config["Healthcheck"]["Test"][-1].endswith("/ping', timeout=4)")  # kept: --format docker
    root = Path(podman("image", "mount", IMAGE).strip())
    try:
        names = {p.relative_to(root).as_posix() for p in root.rglob("*")}
        forbidden = [n for n in names if {".venv", "mlflow.db", "mlruns", ".env", "prepared", "model.safetensors"}
                     & set(n.split("/"))]
        assert forbidden == [], forbidden
        assert "app/src" in names and "app/params.yaml" in names and "opt/venv/bin/dvc" in names
        found = []
        for path in root.rglob("*"):
            # Every file under 20 MB (the CUDA libraries above are the lock's wheels, built elsewhere) and all of
            # /app, where the project's files are.
            if path.is_file() and not path.is_symlink() and (
                    path.stat().st_size < 20_000_000 or path.relative_to(root).parts[0] == "app"):
                data = path.read_bytes()
                found += [f"{path.relative_to(root)}: {s}" for s in SECRETS.values() if s.startswith("hunter2")
                          and s.encode() in data]
        history = podman("image", "history", "--no-trunc", IMAGE) + json.dumps(config)
        found += [f"history or config: {s}" for s in SECRETS.values() if s.startswith("hunter2") and s in history]
        assert found == []
    finally:
        podman("image", "unmount", IMAGE)


@pytest.fixture(scope="module")
def inside(built, tmp_path_factory):
    """The same project, baked again and run in the image with its checkout mounted (chowned to the image's user:
    podman's :U)."""
    project = bake(tmp_path_factory.mktemp("inside"), task="classification")
    _tiny(project)
    started = time.monotonic()
    out = podman("run", "--rm", *PODMAN, "-v", f"{project}:/app:U", IMAGE)  # the default command: dvc repro
    print(f"pipeline in the container {time.monotonic() - started:.0f} s")
    assert "Running stage 'register'" in out
    return project


def test_pipeline_in_the_container_gives_the_metrics_of_outside(built, inside):
    outside, in_container = _quality(built), _quality(inside)
    assert set(outside) == {f"{s}.json" for s in ("prepare", "train", "mlflow", "analyze", "optimize", "robustness",
                                                  "register")}
    # optimize deploys the fastest variant that keeps the quality: a timing, so the two machines (the container and
    # its host, minutes apart) may pick different ones, int8 or fp32 in ONNX Runtime; then the deployable's own
    # figures (its size above all) differ for that reason alone, and only they are left out.
    variants = {json.loads((p / "models/deployable/deployable.json").read_text())["variant"] for p in (built, inside)}
    if len(variants) > 1:
        outside, in_container = ({f: {k: v for k, v in m.items() if not k.startswith("deployable/")}
                                  for f, m in q.items()} for q in (outside, in_container))
    assert in_container == outside
    assert json.loads((inside / "metrics/register.json").read_text())["registered"] == 1
    # The run in the image recorded its environment: exactly uv.lock's versions, Python from the base image.
    import mlflow

    run_id = json.loads((inside / "metrics/mlflow.json").read_text())["run_id"]
    tags = mlflow.MlflowClient(f"sqlite:///{inside}/mlflow.db").get_run(run_id).data.tags
    assert tags["lock_matches"] == "true" and tags["python_version"].startswith("3.11.")


def test_serving_target_answers_rest_and_is_healthy(inside):
    port = free_port()
    name = f"serve-{port}"
    podman("run", "-d", "--rm", *PODMAN, "--name", name, "-v", f"{inside}:/app", "-p", f"127.0.0.1:{port}:5001",
           f"{IMAGE}-serve")
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except OSError:
                running = podman("ps", "-q", "--filter", f"name={name}").strip()
                assert running and time.monotonic() < deadline, subprocess.run(
                    ["podman", "logs", name], capture_output=True, text=True).stderr[-3000:]
                time.sleep(1)
        assert subprocess.run(["podman", "healthcheck", "run", name]).returncode == 0
        images = np.load(inside / "data/prepared/test/images.npy", mmap_mode="r")  # (N, H, W, 3) uint8
        batch = np.ascontiguousarray(images[:2].transpose(0, 3, 1, 2), np.float32) / 255
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps({"inputs": batch.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            logits = np.asarray(json.loads(response.read())["predictions"])
        classes = json.loads((inside / "data/prepared/dataset.json").read_text())["num_classes"]  # params: auto
        assert logits.shape == (2, classes) and np.isfinite(logits).all()
    finally:
        subprocess.run(["podman", "rm", "-f", name], capture_output=True)


def test_compose_stack_is_the_team_server_of_the_server_test(tmp_path):
    """compose.yaml configures the server as tests/test_server.py runs it (`make server AUTH=1` on PostgreSQL, S3
    and basic-auth), publishes on loopback only, and takes every secret from .env; podman-compose renders it (its
    --dry-run up prints the podman commands; Debian's 1.0.3 has no `config`). The services are not started here:
    the public PostgreSQL and MinIO images cannot be pulled on these machines (README)."""
    if shutil.which("podman-compose") is None:
        pytest.skip("no podman-compose (Debian: apt-get install podman-compose; scripts/test.sh does)")
    from test_server import ARTIFACTS, AUTH_INI, BUCKETS, SERVER_VARIABLES

    project = bake(tmp_path, task="classification", init_git=False)
    stack = yaml.safe_load((project / "compose.yaml").read_text())
    services = stack["services"]
    assert set(services) == {"db", "s3", "mlflow", "model"}
    mlflow = services["mlflow"]
    assert set(SERVER_VARIABLES) <= set(mlflow["environment"])
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"] == ARTIFACTS
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    script = mlflow["command"][-1]
    assert AUTH_INI.format("%s").replace("\n", "\\n") in script and f"for b in {BUCKETS}" in script
    assert script.splitlines()[-1] == "exec mlflow server --host 0.0.0.0 --port 5000 --app-name basic-auth"
    assert services["model"]["build"]["target"] == "serve"
    text = (project / "compose.yaml").read_text()
    assert not any(s in text for s in SECRETS.values() if s.startswith("hunter2"))

    name = f"ctr{os.getpid()}"
    missing = subprocess.run(["podman-compose", "-p", name, "--dry-run", "up", "-d"], cwd=project, capture_output=True,
                             text=True)
    assert missing.returncode != 0 and "copy .env.example to .env" in missing.stderr
    example = (project / ".env.example").read_text()
    assert set(SECRETS) == {line.split("=")[0] for line in example.splitlines() if "=" in line}
    (project / ".env").write_text("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    try:
        dry = subprocess.run(["podman-compose", "-p", name, "--dry-run", "up", "-d"], cwd=project,
                             capture_output=True, text=True)
        assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
        runs = [line.split() for line in dry.stdout.splitlines() if line.startswith("podman run")]
        assert len(runs) == 4
        published = [run[i + 1] for run in runs for i, arg in enumerate(run) if arg == "-p"]
        assert sorted(published) == ["127.0.0.1:5000:5000", "127.0.0.1:5001:5001", "127.0.0.1:9000:9000"]
        assert f"-e MLFLOW_AUTH_ADMIN_PASSWORD={SECRETS['MLFLOW_ADMIN_PASSWORD']}" in dry.stdout  # from .env
    finally:  # --dry-run still makes the stack's volumes and network
        for volume in ("db", "s3"):
            subprocess.run(["podman", "volume", "rm", "-f", f"{name}_{volume}"], capture_output=True)
        subprocess.run(["podman", "network", "rm", "-f", f"{name}_default"], capture_output=True)
