"""Files: outputs appear whole or not at all (written to a temporary sibling, then renamed into place), their
sha256, which later stages check before trusting a file, and a stage's inputs checked before it starts."""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml


@contextlib.contextmanager
def atomic_path(path, directory=False):
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is deleted.
    directory=True yields an empty directory to fill.

        with atomic_path("results.json") as tmp:
            tmp.write_text("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    target = tmp / path.name
    if directory:
        target.mkdir()
    try:
        yield target
        if directory and path.is_dir():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path, obj):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


class IntegrityError(ValueError):
    """A file differs from the hash recorded when it was checked."""


def read_json(path):
    return json.loads(Path(path).read_text())


def sha256(path):
    """Hex digest of a file, read in 1 MiB blocks (model files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2 ** 20), b""):
            h.update(block)
    return h.hexdigest()


def require(stage, dvc_yaml="dvc.yaml"):
    """Stop before any work, naming what is missing, when the stage's dvc.yaml deps are absent: a stage run by
    hand before the ones that make its inputs. (Without a dvc.yaml, as in scratch copies, nothing is checked.)"""
    if not Path(dvc_yaml).is_file():
        return
    deps = yaml.safe_load(Path(dvc_yaml).read_text())["stages"][stage]["deps"]
    missing = [d for d in deps if not Path(d).exists()]
    if missing:
        raise FileNotFoundError(f"missing input(s) {', '.join(missing)}; `dvc repro {stage}` makes them by running "
                                "the stages before it")
