"""Files: outputs appear whole or not at all (written to a temporary sibling, then renamed into place), their
sha256, which later stages check before trusting a file, and a stage's inputs and output locations checked before
it starts (the leftovers of an interrupted write removed).

    >>> debris(Path("models/model.safetensors"))
    'models/.model.safetensors.*'
"""

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from {{ cookiecutter.package_name }}.lib import paths


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
    except Exception as e:
        if not disk_full(e):
            raise
        # Libraries say it without the path (safetensors' SafetensorError, OSError errno 28 from a flush).
        free = shutil.disk_usage(path.parent).free
        raise OSError(errno.ENOSPC, f"{path}: not written, its disk is full ({free / 2**20:.0f} MiB free in "
                      f"{path.parent.resolve()}); any previous {path.name} is untouched; free some space (dvc gc, "
                      "old mlruns/) and run the stage again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def disk_full(e):
    """An error that means no space was left: OSError ENOSPC / EDQUOT, or a library's error carrying its text."""
    codes = (errno.ENOSPC, errno.EDQUOT)
    return (isinstance(e, OSError) and e.errno in codes) or any(os.strerror(c) in str(e) for c in codes)


def write_json(path, obj):
    """JSON without NaN or Infinity: a metric that is not a number stops the stage instead of reaching DVC."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    except ValueError:
        bad = [k for k, v in (obj.items() if isinstance(obj, dict) else ()) if isinstance(v, float)
               and not math.isfinite(v)]
        raise ValueError(f"{path}: not written, non-finite values {bad or '(nested)'}; the numbers behind them "
                         "diverged or divided by zero") from None
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


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


def stage_spec(stage, dvc_yaml="dvc.yaml"):
    """The stage's entry in dvc.yaml (deps, outs, ...); None without a dvc.yaml, as in scratch copies."""
    if not Path(dvc_yaml).is_file():
        return None
    return yaml.safe_load(Path(dvc_yaml).read_text())["stages"][stage]


def require(stage, spec):
    """Stop before any work, naming what is missing, when the stage's dvc.yaml deps (spec: stage_spec) are
    absent: a stage run by hand before the ones that make its inputs. Without a spec nothing is checked."""
    if spec is None:
        return
    # check's output orders the stages for DVC only: each stage repeats check's checks itself (stage.begin), so
    # one run by hand needs no `dvc repro check` first.
    deps = [d for d in spec["deps"] if d != str(paths.CHECKED)]
    missing = [d for d in deps if not Path(d).exists()]
    if missing:
        raise FileNotFoundError(f"missing input(s) {', '.join(missing)}; `dvc repro {stage}` makes them by running "
                                "the stages before it")


# --- before a stage starts: where its outputs go --------------------------------------------------------------

def stage_outputs(spec):
    """The paths a stage's dvc.yaml entry (stage_spec) says it writes (outs, metrics, plots); [] without one."""
    if spec is None:
        return []
    return [Path(next(iter(o)) if isinstance(o, dict) else o)
            for key in ("outs", "metrics", "plots") for o in spec.get(key, [])]


def debris(path):
    """The glob of atomic_path's temporary siblings of `path`."""
    return str(Path(path).parent / f".{Path(path).name}.*")


def remove_debris(outputs):
    """Delete what an interrupted atomic write left (SIGKILL, power loss: its `finally` never ran). Returns them."""
    found = [d for o in outputs for d in Path(o).parent.glob(Path(debris(o)).name)]
    for d in found:
        shutil.rmtree(d) if d.is_dir() and not d.is_symlink() else d.unlink()
    return found


def existing_parent(path):
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path, directory=None):
    """`path` (or, if absent, the folder that will hold it) can be written, found by writing, not by mode bits
    (which root ignores and read-only mounts don't show). directory=True/False: it must be a folder / a file."""
    path = Path(path)
    if path.exists() and directory is not None and path.is_dir() != directory:
        kind, other = ("a folder", "a file") if directory else ("a file", "a folder")
        raise NotADirectoryError(f"{path}: must be {kind} but is {other}; move it aside or delete it")
    folder = path if path.is_dir() else existing_parent(path.parent)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: a file where a folder is needed (to hold {path}); move it aside")
    try:
        tempfile.TemporaryFile(dir=folder).close()
        if path.is_file():
            with open(path, "r+b"):
                pass
    except OSError as e:
        raise PermissionError(f"{path if path.is_file() else folder}: not writable ({e.strerror}); fix its "
                              "permissions or mount, or run from a writable copy of the project") from None


def size(path):
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def check_space(outputs, inputs, free=lambda folder: shutil.disk_usage(folder).free):
    """Room for the outputs: estimated as twice the larger of what they take now (an atomic write keeps the old
    copy until the new one is whole) and the model files among the inputs (a later stage writes variants of the
    model and MLflow copies of it), and at least 1 MiB."""
    models_dir = paths.CHECKPOINT.parent
    model_inputs = sum(size(i) for i in inputs if Path(i).parts[:1] == models_dir.parts)
    need = max(2 * sum(size(o) for o in outputs), 2 * model_inputs, 2**20)
    for folder in {existing_parent(Path(o).parent) for o in outputs}:
        if (have := free(folder)) < need:
            raise OSError(f"{folder.resolve()}: {have / 2**20:.0f} MiB free, the stage needs about "
                          f"{need / 2**20:.0f} MiB; free some space (dvc gc, old mlruns/) or move the project")


def check_room(needs, stage, free=lambda folder: shutil.disk_usage(folder).free):
    """Room, before the work, for what the stage will write late: needs = {folder: (bytes, what)}. Folders on one
    disk add up; each disk needs a quarter more than the sum, plus 8 MiB (headers, MLflow's small files)."""
    disks = {}
    for folder, (size, what) in needs.items():
        found = existing_parent(folder)
        disk = disks.setdefault(os.stat(found).st_dev, {"folder": found, "bytes": 0, "what": []})
        disk["bytes"] += size
        disk["what"].append(f"{what} in {Path(folder)}")
    for disk in disks.values():
        need = int(disk["bytes"] * 1.25) + 8 * 2**20
        if (have := free(disk["folder"])) < need:
            raise OSError(f"{disk['folder'].resolve()}: {have} bytes free ({have / 2**20:.0f} MiB), {stage} needs "
                          f"about {need} bytes ({need / 2**20:.0f} MiB: {', '.join(disk['what'])}); free some space "
                          "(dvc gc, old mlruns/) or move the project")


def preflight(spec):
    """Before work: leftovers of interrupted writes removed; every output location the kind it must be (a file,
    or a folder when dvc.yaml's path has no suffix) and writable; room for the outputs."""
    outputs = stage_outputs(spec)
    remove_debris(outputs)
    for o in outputs:
        check_writable(o, directory=not o.suffix)
    if outputs:
        check_space(outputs, [d for d in spec["deps"] if Path(d).exists()])
