"""Bad input, table-driven: each case exits non-zero, names the field or file and the fix, writes nothing and
leaves no MLflow run RUNNING. Bad cookiecutter answers have their own table in test_hooks.py."""

import shutil
import socket
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import bake, project_env


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


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _folder(problem):
    """Switch to the user's-images source, with `problem` planted in data/raw."""
    def edit(p):
        p["prepare"]["source"] = "folder"
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
    return edit, plant


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
    ("resize", _set("prepare.resize", "fit"), None, PREPARE, {}, "prepare.resize='fit': must be one of pad, crop"),
    ("window", _set("prepare.window", [4095, 0]), None, PREPARE, {}, "prepare.window=[4095, 0]: must be a list"),
    ("num-classes-auto-synthetic", _set("prepare.num_classes", "auto"), None, PREPARE, {},
     "auto reads the classes from data/raw"),
    ("predict-missing-input", None, None, "predict nowhere.png --out predictions", {},
     "nowhere.png: no such file or folder"),
]


def _snapshot(project):
    return {str(p.relative_to(project)): p.stat().st_mtime_ns for p in project.rglob("*")
            if p.is_file() and ".git" not in p.parts and p.name != "params.yaml" and "__pycache__" not in p.parts}


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
        if plant:
            plant(project)
        before = _snapshot(project)
        module, *args = command.split()
        env = {k: v.format(port=_closed_port()) for k, v in env.items()}
        result = subprocess.run([sys.executable, "-m", f"{package}.{module}", *args], cwd=project,
                                env=project_env(project, **env), capture_output=True, text=True, timeout=300)
        running = 0
        if (project / "mlflow.db").exists():
            with sqlite3.connect(project / "mlflow.db") as db:
                running = db.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]
        return name, (result.returncode, result.stdout + result.stderr, before, _snapshot(project), running)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, CASES))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_early_and_clearly(outcomes, case):
    code, message, before, after, running = outcomes[case[0]]
    assert code != 0, message
    assert case[-1] in message, message
    assert "Traceback" not in message, message  # a sentence for the user, not a stack
    assert after == before  # nothing written, nothing half-written
    assert running == 0  # no MLflow run left RUNNING


def test_the_table_is_big_enough():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)
