"""Bad input, table-driven: each case exits non-zero, names the field or file and the fix, writes nothing and
leaves no MLflow run RUNNING. Bad cookiecutter answers have their own table in test_hooks.py."""

import http.server
import importlib.metadata
import io
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import bake, free_port, project_env


def _set(key, value):
    def edit(p):
        *path, last = key.split(".")
        for k in path:
            p = p[k]
        p[last] = value
    return edit


def _drop(key):
    def edit(p):
        *path, last = key.split(".")
        for k in path:
            p = p[k]
        del p[last]
    return edit


def _all(*edits):
    def edit(p):
        for e in edits:
            e(p)
    return edit


def _folder(problem, *edits):
    """Switch to the user's-images source, with `problem` planted in data/raw (and `edits` to params)."""
    def edit(p):
        p["prepare"]["source"] = "folder"
        _all(*edits)(p)
    def plant(project):
        raw = project / "data/raw"
        (raw / "images").mkdir()
        (raw / "masks").mkdir()
        rng = np.random.default_rng(0)
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(raw / f"images/{i}.png")
            Image.fromarray(rng.integers(0, 2, (32, 32), dtype=np.uint8)).save(raw / f"masks/{i}.png")
        if problem == "corrupt":
            (raw / "images/5.png").write_bytes(b"not a png")
        elif problem == "missing_mask":
            (raw / "masks/7.png").unlink()
        elif problem == "mask_size":
            Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(raw / "masks/3.png")
        elif problem == "mask_values":
            Image.fromarray(np.full((32, 32), 9, dtype=np.uint8)).save(raw / "masks/4.png")
        elif problem == "same_name":  # pairs with masks/5.png too
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(raw / "images/5.JPG")
    return edit, plant


SECRET = "hunter2-not-for-logs"


def _plant(rel, content=b"", replace=False):
    """A file at `rel` (its folders made), replacing what is there with replace=True."""
    def plant(project):
        path = project / rel
        if replace:
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return plant


def _lock(*names):
    """uv.lock edited by hand: these packages locked at 0.0.1, which this environment does not have."""
    def plant(project):
        lock = project / "uv.lock"
        text = lock.read_text()
        for name in names:
            version = importlib.metadata.version(name).split("+")[0]
            edited = text.replace(f'name = "{name}"\nversion = "{version}"', f'name = "{name}"\nversion = "0.0.1"')
            assert edited != text, name
            text = edited
        lock.write_text(text)
    return plant


HELD = {}  # project: the connection that keeps its store locked while its case runs


def _store(*sql, hold=False):
    """mlflow.db made by these SQL statements; hold=True keeps the connection (and its lock) open."""
    def plant(project):
        con = sqlite3.connect(project / "mlflow.db", isolation_level=None, check_same_thread=False)
        for statement in sql:
            con.execute(statement)
        if hold:
            HELD[project] = con
        else:
            con.close()
    return plant


def _first_revision():
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    return list(ScriptDirectory.from_config(_get_alembic_config(db_url="")).walk_revisions())[-1].revision


class _Failing(http.server.BaseHTTPRequestHandler):
    code = 503

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_error(self.code)

    do_POST = do_GET

    def log_message(self, *args):
        pass


class _Refusing(_Failing):  # a server in front of MLflow that wants credentials
    code = 401


class _Missing(_Failing):  # a web server, but no MLflow at this address or path prefix
    code = 404


def _png():
    """A small PNG's bytes: an input predict finds."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# (id, params edit, planted files, command, extra env, what the message must contain)
PREPARE, TRAIN = "prepare", "train"
CASES = [
    ("lr-negative", _set("lr", -1), None, PREPARE, {}, "lr=-1: must be a number in (0, inf)"),
    ("lr-string", _set("lr", "fast"), None, PREPARE, {}, "lr='fast'"),
    ("seed-float", _set("seed", 1.5), None, PREPARE, {}, "seed=1.5: must be an integer"),
    ("epochs-zero", _set("train.epochs", 0), None, PREPARE, {}, "train.epochs=0: must be an integer >= 1"),
    ("batch-size-string", _set("train.batch_size", "16"), None, PREPARE, {}, "train.batch_size='16'"),
    ("misspelt-key", _set("train.epoch", 30), None, PREPARE, {}, "train.epoch: unknown key; did you mean train.epochs"),
    ("misspelt-mlflow-key", _set("mlflow.tracking_url", "x"), None, PREPARE, {}, "did you mean mlflow.tracking_uri?"),
    ("misspelt-section", _set("optimise", {}), None, PREPARE, {}, "optimise: unknown key; did you mean optimize?"),
    ("missing-section", _drop("analyze"), None, PREPARE, {}, "analyze: missing"),
    ("missing-key", _drop("train.scheduler.name"), None, PREPARE, {}, "train.scheduler.name: missing"),
    ("task", _set("prepare.task", "detection"), None, PREPARE, {}, "prepare.task='detection': must be one of"),
    ("image-size", _set("prepare.image_size", 8), None, PREPARE, {}, "prepare.image_size=8: must be an integer >= 16"),
    ("val-fraction", _set("prepare.val_fraction", 0.7), None, PREPARE, {}, "prepare.val_fraction=0.7"),
    ("optimizer", _set("train.optimizer.name", "rmsprop"), None, PREPARE, {}, "train.optimizer.name='rmsprop'"),
    ("scheduler", _set("train.scheduler.name", "linear"), None, PREPARE, {}, "train.scheduler.name='linear'"),
    ("optimizer-key", _set("train.optimizer.momentum", 0.9), None, PREPARE, {},
     "train.optimizer.momentum: adamw takes no momentum"),
    ("bool-as-string", _set("train.amp", "yes"), None, PREPARE, {}, "train.amp='yes': must be true or false"),
    ("loss-for-task", _set("train.loss", "ce"), None, PREPARE, {}, "train.loss='ce': valid segmentation losses"),
    ("pruning-amount", _set("optimize.pruning.amount", 1.5), None, PREPARE, {}, "optimize.pruning.amount=1.5"),
    ("declared-epsilon", _set("robustness.declared_epsilon", 3), None, PREPARE, {},
     "robustness.declared_epsilon=3: must be one of robustness.epsilons"),
    ("corruption-name", _set("robustness.corruptions", ["fog"]), None, PREPARE, {}, "item 'fog' must be one of"),
    ("severity", _set("register.gates.block_severity", "severe"), None, PREPARE, {},
     "register.gates.block_severity='severe'"),
    ("promote-policy", _set("register.promote", "sometimes"), None, PREPARE, {}, "register.promote='sometimes'"),
    ("model-name", _set("register.model_name", "team/model"), None, PREPARE, {}, "register.model_name='team/model'"),
    ("tracking-scheme", _set("mlflow.tracking_uri", "ftp://host/x"), None, PREPARE, {}, "mlflow.tracking_uri='ftp"),
    ("not-yaml", "seed: [1\n", None, PREPARE, {}, "params.yaml: not valid YAML"),
    ("architecture", _set("train.model.architecture", "Unett"), None, PREPARE, {}, "Unett"),
    ("encoder", _set("train.model.encoder", "resnet19"), None, PREPARE, {}, "resnet19"),
    ("server-down", None, None, TRAIN, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}"},
     "unreachable"),
    ("data-corrupt-image", *_folder("corrupt"), PREPARE, {}, "images/5.png"),
    ("data-missing-mask", *_folder("missing_mask"), PREPARE, {}, "7.png"),
    ("data-mask-size", *_folder("mask_size"), PREPARE, {}, "masks/3.png"),
    ("data-mask-values", *_folder("mask_values"), PREPARE, {}, "masks/4.png"),
    ("stage-before-its-inputs", None, None, "analyze", {}, "missing input(s) models/model.safetensors"),
    ("compare-bad-option", None, None, "compare --max-runs 0", {}, "--max-runs 0: must be >= 1"),
    # --- credentials: refused, and never echoed ---
    ("uri-password", _set("mlflow.tracking_uri", f"postgresql://me:{SECRET}@db/mlflow"), None, PREPARE, {},
     "mlflow.tracking_uri='postgresql://me:***@db/mlflow': must not carry a password"),
    ("uri-token-query", _set("mlflow.tracking_uri", f"http://h:5000/?token={SECRET}"), None, PREPARE, {},
     "PGPASSWORD or ~/.pgpass"),
    ("env-uri-password-db-down", None, None, TRAIN,
     {"MLFLOW_TRACKING_URI": f"postgresql+psycopg://me:{SECRET}@127.0.0.1:{{port}}/mlflow"},
     "tracking database postgresql+psycopg://me:***@127.0.0.1"),
    ("env-uri-password-server-down", None, None, TRAIN, {"MLFLOW_TRACKING_URI": f"http://me:{SECRET}@127.0.0.1:{{port}}"},
     "http://me:***@127.0.0.1"),
    # --- numerics ---
    ("diverging-lr", _all(_set("lr", 1e30), _set("train.optimizer", {"name": "sgd"})), None, TRAIN, {},
     "training diverged at epoch 1, batch"),
    ("duplicate-key", "seed: 1\nseed: 2\n", None, PREPARE, {}, "duplicate key 'seed'"),
    ("lr-nan", _set("lr", float("nan")), None, PREPARE, {}, "lr=nan: must be a number"),
    ("lr-inf", _set("lr", float("inf")), None, PREPARE, {}, "lr=inf: must be a number"),
    ("grad-clip-zero", _set("train.grad_clip_norm", 0), None, PREPARE, {}, "train.grad_clip_norm=0"),
    ("label-smoothing-one", _set("train.label_smoothing", 1.0), None, PREPARE, {}, "train.label_smoothing=1.0"),
    # --- storage and the tracking store, checked before work ---
    ("output-is-a-folder", None, _plant("models/model.safetensors/x"), TRAIN, {},
     "models/model.safetensors: must be a file but is a folder"),
    ("output-folder-is-a-file", None, _plant("plots"), TRAIN, {}, "plots: a file where a folder is needed"),
    ("prepared-is-a-file", None, _plant("data/prepared", replace=True), PREPARE, {},
     "data/prepared: must be a folder but is a file"),
    ("mlruns-is-a-file", None, _plant("mlruns"), TRAIN, {}, "mlruns: must be a folder but is a file"),
    ("store-is-a-folder", None, _plant("mlflow.db/x"), TRAIN, {}, "the tracking store is a folder"),
    ("store-corrupt", None, _plant("mlflow.db", b"garbage " * 100), TRAIN, {}, "mlflow.db: not an SQLite database"),
    ("store-foreign", None, _store("create table customers (id integer)"), TRAIN, {}, "of another application"),
    ("store-newer-schema", None, _store("create table experiments (id integer)",
                                        "create table alembic_version (version_num varchar(32))",
                                        "insert into alembic_version values ('ffffffffffff')"), TRAIN, {},
     "made by a newer MLflow"),
    ("store-older-schema", None, _store("create table experiments (id integer)",
                                        "create table alembic_version (version_num varchar(32))",
                                        f"insert into alembic_version values ('{_first_revision()}')"), TRAIN, {},
     "made by an older MLflow"),
    ("store-locked", _set("mlflow.timeout_s", 1), _store("create table t (id integer)", "begin exclusive",
                                                         "insert into t values (1)", hold=True), TRAIN, {},
     "locked by another process"),
    ("experiment-deleted", None, "deleted-experiment", TRAIN, {}, "is deleted: restore it"),
    # --- tracking failures bounded ---
    ("server-503", None, None, TRAIN, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{failing}"}, "answers HTTP 503"),
    ("server-401", None, None, TRAIN, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{refusing}"}, "error code 401"),
    ("server-silent", _set("mlflow.timeout_s", 2), None, TRAIN, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{silent}"},
     "unreachable (timed out)"),
    ("postgres-down", None, None, TRAIN, {"MLFLOW_TRACKING_URI": "postgresql://127.0.0.1:{port}/mlflow"},
     "tracking database postgresql://127.0.0.1"),
    ("mysql-down", None, None, TRAIN, {"MLFLOW_TRACKING_URI": "mysql://u@127.0.0.1:{port}/mlflow"},
     "is unreachable"),
    ("timeout-zero", _set("mlflow.timeout_s", 0), None, PREPARE, {}, "mlflow.timeout_s=0"),
    # --- training edge cases, named before training ---
    ("device-unknown", _set("train.device", "tpu"), None, TRAIN, {}, "train.device='tpu': no such device here; valid"),
    ("device-absent", _set("train.device", "cuda:7"), None, TRAIN, {}, "train.device='cuda:7'"),
    ("batch-of-one", _set("train.batch_size", 1), None, TRAIN, {}, "batches of one, which BatchNorm"),
    ("threads-zero", _set("train.threads", 0), None, TRAIN, {}, "train.threads=0: must be an integer >= 1, or null"),
    ("threads-word", _set("train.threads", "two"), None, PREPARE, {}, "train.threads='two': must be an integer"),
    ("decompression-bomb", *_folder("none", _set("prepare.max_image_pixels", 500)), PREPARE, {},
     "png: over prepare.max_image_pixels=500"),  # whichever image a decoding worker reads first
    ("max-image-pixels-zero", _set("prepare.max_image_pixels", 0), None, PREPARE, {}, "prepare.max_image_pixels=0"),
    ("experiment-empty", _set("mlflow.experiment", " "), None, PREPARE, {}, "mlflow.experiment=' '"),
    ("run-name-number", _set("mlflow.run_name", 5), None, PREPARE, {}, "mlflow.run_name=5"),
    ("resize", _set("prepare.resize", "fit"), None, PREPARE, {}, "prepare.resize='fit': must be one of pad, crop"),
    ("window", _set("prepare.window", [4095, 0]), None, PREPARE, {}, "prepare.window=[4095, 0]: must be a list"),
    ("num-classes-synthetic", _set("prepare.num_classes", 9), None, PREPARE, {},
     "synthetic segmentation data supports prepare.num_classes from 2 to 6, got 9"),
    ("predict-missing-input", None, None, "predict nowhere.png --out predictions", {},
     "nowhere.png: no such file or folder"),
    ("drift-alpha", _set("predict.drift.alpha", 1.5), None, PREPARE, {}, "predict.drift.alpha=1.5: must be a number"),
    # --- the check stage, which DVC runs before emptying any other stage's outputs ---
    ("check-bad-value", _set("train.epochs", "abc"), None, "check", {},  # dvc exp run -S train.epochs=abc
     "check: ParamsError: params.yaml: train.epochs='abc': must be an integer >= 1"),
    ("check-added-key", _set("train.epoch", 3), None, "check", {},  # -S +train.epoch=3, as DVC's own hint says
     "train.epoch: unknown key; did you mean train.epochs?"),
    # --- an environment that is not the locked one (the switch, ALLOW_LOCK_MISMATCH, unset) ---
    ("lock-edited", None, _lock("torch"), PREPARE, {}, "uv.lock: 1 installed package(s) differ from the lock: torch "),
    ("lock-edited-train", None, _lock("torch", "numpy", "pyyaml", "tqdm", "mlflow"), TRAIN, {},
     "uv.lock: 5 installed package(s) differ from the lock: mlflow "),  # names sorted, the first three shown
    ("lock-edited-check", None, _lock("numpy", "pyyaml", "tqdm", "mlflow", "dvc"), "check", {},
     ") and 2 more; `uv sync --frozen` installs the locked versions"),
    ("lock-switch-misspelt", None, None, PREPARE, {"ALLOW_LOCK_MISMATCH": "maybe"},
     "ALLOW_LOCK_MISMATCH='maybe': must be 1"),
    # --- nothing lost, nothing falsely alarmed (issue 26) ---
    ("data-same-name", *_folder("same_name"), PREPARE, {},
     "images/5.JPG and data/raw/images/5.png: two images named 5"),
    ("predict-out-is-a-file", None, _plant("predictions", b"mine"), "predict nowhere.png --out predictions", {},
     "--out predictions: is a file, not a folder; give a folder"),  # before the inputs, before any model loads
    ("predict-model-uri", None, _plant("in/a.png", _png()), "predict in --out out --model models:/%%%", {},
     "models:/%%%: not a valid model URI; valid forms: models:/<name>@<alias>, models:/<name>/<version>"),
    ("predict-model-scheme", None, _plant("in/a.png", _png()), "predict in --out out --model s3x://bucket/model", {},
     "s3x://bucket/model: unsupported scheme s3x:; give a deployable folder (a path) or a registry URI"),
    ("server-404", None, None, TRAIN, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{missing}/mlflow"},
     "/mlflow answers HTTP 404 (not found) at /health and at its REST API (/api/2.0/mlflow/...): no MLflow server at "
     "this address; check the server's host, port and path prefix"),
    ("predict-registry-404", None, _plant("in/a.png", _png()), "predict in --out out --model models:/m@champion",
     {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{missing}"}, "answers HTTP 404 (not found) at /health"),
    ("split-val-empty", _all(_set("prepare.synthetic_images", 10), _set("prepare.val_fraction", 0.04),
                             _set("prepare.test_fraction", 0.04)), None, PREPARE, {},
     "the val and test splits would be empty (train 10, val 0, test 0); add images (at least 13 in all at these "
     "fractions), or raise val_fraction to 0.1 and test_fraction to 0.1: train 8, val 1, test 1"),
    ("split-train-empty", _all(_set("prepare.synthetic_images", 10), _set("prepare.val_fraction", 0.49),
                               _set("prepare.test_fraction", 0.49)), None, PREPARE, {},
     "the train split would be empty (train 0, val 5, test 5); add images (at least 11 in all at these fractions), "
     "or lower val_fraction and test_fraction (e.g. 0.4 each): train 2, val 4, test 4"),
]
# A run that fails in training ends FAILED (others open no run).
FAILED_RUN = {"diverging-lr"}


def _snapshot(project):
    # The tracking store aside (a failing train run is recorded there, FAILED): every output of a stage.
    def store(p):  # mlflow.db and its -journal / .lock, mlruns/
        top = p.relative_to(project).parts[0]
        return top.startswith("mlflow.db") or top == "mlruns"
    return {str(p.relative_to(project)): p.stat().st_mtime_ns for p in project.rglob("*")
            if p.is_file() and ".git" not in p.parts and p.name != "params.yaml" and "__pycache__" not in p.parts
            and not store(p)}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case run in its own copy of one segmentation project (tiny params, after prepare: train has its
    inputs, nothing later has), two at a time: (exit code, output, files before, files after, RUNNING runs)."""
    base = bake(tmp_path_factory.mktemp("bad"), init_git=False)
    params = yaml.safe_load((base / "params.yaml").read_text())
    params["prepare"].update(image_size=32, synthetic_images=40)
    (base / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    package = base.name.replace("-", "_")
    subprocess.run([sys.executable, "-m", f"{package}.prepare"], cwd=base, env=project_env(base), check=True,
                   capture_output=True)
    # A store whose experiment (the project's) is in MLflow's trash.
    deleted_store = tmp_path_factory.mktemp("deleted") / "mlflow.db"
    code = (f"import mlflow; mlflow.set_tracking_uri('sqlite:///{deleted_store}'); "
            f"mlflow.delete_experiment(mlflow.create_experiment({params['mlflow']['experiment']!r}))")
    subprocess.run([sys.executable, "-c", code], cwd=deleted_store.parent, env=project_env(base), check=True,
                   capture_output=True)
    # A tracking server that answers 503 to everything, and one that accepts connections and never answers.
    failing = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    refusing = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    missing = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Missing)
    for server in (failing, refusing, missing):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    ports = {"failing": failing.server_address[1], "refusing": refusing.server_address[1],
             "missing": missing.server_address[1], "silent": silent.getsockname()[1]}

    def run(case):
        name, edit, plant, command, env, _ = case
        project = base.parent / name
        shutil.copytree(base, project)
        if isinstance(edit, str):
            (project / "params.yaml").write_text(edit)
        elif edit:
            p = yaml.safe_load((project / "params.yaml").read_text())
            edit(p)
            (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        if plant == "deleted-experiment":
            shutil.copy(deleted_store, project / "mlflow.db")
        elif plant:
            plant(project)
        before = _snapshot(project)
        module, *args = command.split()
        env = {k: v.format(port=free_port(), **ports) for k, v in env.items()}
        result = subprocess.run([sys.executable, "-m", f"{package}.{module}", *args], cwd=project,
                                env=project_env(project, **env), capture_output=True, text=True, timeout=300)
        if project in HELD:
            HELD.pop(project).close()
        try:
            with sqlite3.connect(project / "mlflow.db") as db:
                statuses = [r[0] for r in db.execute("select status from runs")]
        except sqlite3.Error:  # no store, or the planted broken one
            statuses = []
        return name, (result.returncode, result.stdout + result.stderr, before, _snapshot(project), statuses)

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            return dict(pool.map(run, CASES))
    finally:
        failing.shutdown()
        refusing.shutdown()
        missing.shutdown()
        silent.close()


@pytest.mark.pipeline
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_early_and_clearly(outcomes, case):
    code, message, before, after, statuses = outcomes[case[0]]
    assert code != 0, message
    assert case[-1] in message, message
    assert "Traceback" not in message, message  # a sentence for the user, not a stack
    assert SECRET not in message  # a password is never printed back
    assert after == before  # nothing written, nothing half-written
    assert "RUNNING" not in statuses  # no MLflow run left RUNNING
    assert statuses == (["FAILED"] if case[0] in FAILED_RUN else [])


@pytest.mark.fast
def test_the_table_is_big_enough():
    assert len(CASES) >= 78 and len({c[0] for c in CASES}) == len(CASES)
