"""The MLflow run's lifecycle: opened by train in the project's experiment with its tags (git, DVC experiment,
process), reopened by each later stage, and always ended FINISHED, FAILED or KILLED, never left RUNNING.

Not a wrapper: stages call mlflow.log_params / log_metrics / log_artifact themselves.

    >>> run_name("Unet", "resnet18", False, now=0).rsplit("_", 2)[0]
    'unet_resnet18'
"""

import contextlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import mlflow
import psutil
from mlflow.utils.file_utils import local_file_uri_to_path

from {{ cookiecutter.package_name }}.lib import energy, paths, store


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
    store.connect(cfg, store.repo_root())
    close_orphans(ref["experiment_id"])
    return mlflow.start_run(run_id=ref["run_id"], tags=process_tags())


@contextlib.contextmanager
def closing(start, stage_name=None, cfg=None):
    """Yield start() (an MLflow run, or None with tracking off) and end the active run FINISHED, FAILED, or
    KILLED (Ctrl-C; SIGTERM once routed to KeyboardInterrupt), never RUNNING. The run is opened inside, so
    a signal that lands while it opens is caught too: MLflow's own exit hook would mark it FINISHED, and
    mlflow.start_run's context manager calls an interrupt FAILED.

    With `cfg` (params' mlflow section) and mlflow.energy.enabled, the stage's energy is measured from the
    run's opening to its end and logged into it (energy.log): every tracked stage gets it here, once."""
    tracker = None
    measured = cfg is not None and cfg["energy"]["enabled"]
    try:
        if measured:  # before the run opens: a country codecarbon does not know leaves no FAILED run behind
            energy.check_country(cfg["energy"]["country"])
        run = start()
        if run is not None and measured:
            tracker = energy.start(cfg["energy"]["country"], stage_name)
        yield run
    except KeyboardInterrupt:
        energy.stop(tracker)
        if mlflow.active_run():
            mlflow.end_run("KILLED")
        raise
    except BaseException:
        energy.stop(tracker)
        if mlflow.active_run():
            mlflow.end_run("FAILED")
        raise
    if mlflow.active_run():
        if tracker is not None:
            energy.log(tracker, stage_name, cfg["energy"]["country"])
        mlflow.end_run("FINISHED")


def start(cfg, default_name, tags):
    """Open the pipeline's run (train) in the project's experiment, tagged with `tags`, the git / DVC context and
    this process; its name is mlflow.run_name or default_name."""
    experiment_id = store.set_experiment(cfg, store.repo_root())
    close_orphans(experiment_id)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=cfg["run_name"] or default_name,
                           tags={**tags, **context_tags(), **process_tags()}, log_system_metrics=cfg["system_metrics"])
    return run


def pipeline_run(cfg, stage_name):
    """The stages after train: `with tracking.pipeline_run(p["mlflow"], "analyze") as run:` reopens train's run
    (None with tracking off), measures the stage's energy and ends the run as closing() says."""
    return closing(lambda: resume(cfg), stage_name, cfg)


def local_artifacts(run):
    """The folder of the run's artifacts when the store keeps them on this machine (a file: URI), else None."""
    uri = run.info.artifact_uri
    return Path(local_file_uri_to_path(uri)) if uri.startswith("file:") else None


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
