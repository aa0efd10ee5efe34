"""Where runs go: the tracking store resolved once, from the repository root, and checked before work starts.

Not a wrapper: stages call mlflow.log_params / log_metrics / log_artifact themselves.

    >>> tracking_uri("sqlite:///mlflow.db", root=Path("/repo"), env={})
    'sqlite:////repo/mlflow.db'
"""

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import psutil
from filelock import FileLock

from {{ cookiecutter.package_name }} import paths


def repo_root():
    # DVC sets DVC_ROOT to the main repository, also for `dvc exp run --temp/--queue`, whose commands run in
    # throw-away copies under .dvc/tmp/exps: anything resolved against the working directory there is lost.
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(configured, root, env=os.environ):
    """MLFLOW_TRACKING_URI wins over params; a relative sqlite path is made absolute against `root`."""
    uri = env.get("MLFLOW_TRACKING_URI") or configured
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str((Path(root) / uri[len(prefix):]).resolve())
    return uri


def check_reachable(uri, timeout=5.0):
    """Fail in seconds, not after MLflow's minutes of HTTP retries, when a tracking server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # it answered (auth, proxy pages...): reachable
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(
            f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)}). Start it (mlflow server "
            "--host 127.0.0.1 --port 5000), fix mlflow.tracking_uri / MLFLOW_TRACKING_URI, use the embedded "
            "store (sqlite:///mlflow.db), or set mlflow.enabled: false") from None


@contextlib.contextmanager
def store_lock(uri):
    """Hold an exclusive lock beside a local sqlite store (no-op for servers).

    Several processes opening a fresh store at once (queue workers, parallel stages) race in MLflow's schema
    migrations and die ("duplicate column name"); creating the same experiment twice fails too. Both happen
    under this lock, once; later opens only wait for it briefly."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(db.with_name(db.name + ".lock")):
        yield


def connect(cfg, root):
    """Point MLflow at the project's store, after checking a server answers; create or migrate a local
    store under store_lock. Returns the URI."""
    uri = tracking_uri(cfg["tracking_uri"], root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        client = mlflow.MlflowClient()
        client.search_experiments(max_results=1)  # tracking tables
        client.search_registered_models(max_results=1)  # registry tables
    return uri


def set_experiment(cfg, root):
    """connect(), then the project's experiment id, created if needed.

    With a local sqlite store, new experiments keep artifacts in <root>/mlruns, absolute: MLflow's default
    (./mlruns of the working directory) would land in DVC's temporary experiment copies."""
    uri = connect(cfg, root)
    with store_lock(uri):
        exp = mlflow.get_experiment_by_name(cfg["experiment"])
        if exp is not None:
            return exp.experiment_id
        location = (root / "mlruns").as_uri() if uri.startswith("sqlite:") else None
        return mlflow.create_experiment(cfg["experiment"], artifact_location=location)


def process_tags():
    """Which process holds a run open, so a later stage can tell a live run from an orphan."""
    return {"process.host": socket.gethostname(), "process.pid": str(os.getpid())}


def close_orphans(experiment_id):
    """End KILLED the RUNNING runs of this experiment whose process, on this host, is gone (SIGKILL, OOM,
    power loss: nothing in the process could end them). Runs of live processes, such as parallel queue
    workers, and of other hosts are left alone. Returns the ids closed."""
    closed = []
    for run in mlflow.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  output_format="list"):
        tags = run.data.tags
        pid = int(tags.get("process.pid", 0))
        if tags.get("process.host") == socket.gethostname() and not (pid > 0 and psutil.pid_exists(pid)):
            mlflow.MlflowClient().set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
            print(f"tracking: run {run.info.run_id} was left RUNNING by a dead process "
                  f"(pid {tags['process.pid']}); marked KILLED")
    return closed


def resume(cfg):
    """Reopen the pipeline's run, the one train recorded in paths.RUN_FILE; None when tracking is off."""
    ref = json.loads(paths.RUN_FILE.read_text())
    if not ref["enabled"]:
        return None
    connect(cfg, repo_root())
    close_orphans(ref["experiment_id"])
    return mlflow.start_run(run_id=ref["run_id"], tags=process_tags())


@contextlib.contextmanager
def closing(start):
    """Yield start() (an MLflow run, or None with tracking off) and end the active run FINISHED, FAILED, or
    KILLED (Ctrl-C; SIGTERM once routed to KeyboardInterrupt), never RUNNING. The run is opened inside, so
    a signal that lands while it opens is caught too: MLflow's own exit hook would mark it FINISHED, and
    mlflow.start_run's context manager calls an interrupt FAILED."""
    try:
        yield start()
    except KeyboardInterrupt:
        if mlflow.active_run():
            mlflow.end_run("KILLED")
        raise
    except BaseException:
        if mlflow.active_run():
            mlflow.end_run("FAILED")
        raise
    if mlflow.active_run():
        mlflow.end_run("FINISHED")


def start(cfg, default_name, tags):
    """Open the pipeline's run (train) in the project's experiment, tagged with `tags`, the git / DVC context and
    this process; its name is mlflow.run_name or default_name."""
    experiment_id = set_experiment(cfg, repo_root())
    close_orphans(experiment_id)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=cfg["run_name"] or default_name,
                           tags={**tags, **context_tags(), **process_tags()}, log_system_metrics=cfg["system_metrics"])
    return run


def pipeline_run(cfg):
    """The stages after train: `with tracking.pipeline_run(p["mlflow"]) as run:` reopens train's run (None with
    tracking off) and ends it as closing() says."""
    return closing(lambda: resume(cfg))


def run_name(architecture, encoder, pretrained, now=None):
    parts = [architecture.lower(), encoder, "pretrained" if pretrained else "random",
             time.strftime("%Y%m%d-%H%M%S", time.localtime(now))]
    return "_".join(p for p in parts if p)


NOT_AN_EXPERIMENT = "none (not a DVC experiment: dvc repro or python -m)"


def git(*args):
    """A git command's output, or None outside a repository / without git."""
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def context_tags(env=os.environ):
    """Git commit, whether the workspace differed from it, and the DVC stage / experiment this process runs
    under. git_dirty counts tracked files changed since the commit, leaving out what the pipeline itself
    rewrites (dvc.lock and the stages' metrics, plots and reports)."""
    commit = (git("rev-parse", "HEAD") or "none").strip()
    changed = [line[3:] for line in (git("status", "--porcelain", "--untracked-files=no") or "").splitlines()
               if not line[3:].startswith(paths.PIPELINE_WRITTEN)]
    tags = {"git_commit": commit, "git_dirty": str(bool(changed)).lower(),
            "dvc_exp_name": env.get("DVC_EXP_NAME") or NOT_AN_EXPERIMENT}
    if changed:
        tags["git_dirty_files"] = ", ".join(changed[:10]) + (f" (+{len(changed) - 10} more)" if len(changed) > 10
                                                            else "")
    for var in ("DVC_STAGE", "DVC_EXP_BASELINE_REV"):
        if env.get(var):
            tags[var.lower()] = env[var]
    return tags
