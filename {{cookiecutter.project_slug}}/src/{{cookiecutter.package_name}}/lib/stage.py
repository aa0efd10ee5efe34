"""The start and end every stage shares: params, environment and inputs checked before work, signals, progress
lines where no terminal shows a bar, and one line plus an exit code for every error a user can cause (under
DVC, a second line: how to get back what DVC removed). Each stage module ends with

    if __name__ == "__main__":
        stage.run("train", main)

Not a framework: a stage's main() stays an ordinary function that tests call in-process (where the caller keeps
its own signal handlers and sees exceptions as exceptions).
"""

import dataclasses
import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tqdm import tqdm

from {{ cookiecutter.package_name }}.lib import environment, files, params, paths

# Errors that mean bad input, missing files or an unreachable service: the user gets their message (which names
# the key, file or URI and the fix) on one line. Anything else is a bug and keeps its traceback.
HANDLED = (ValueError, ConnectionError, OSError)

# SIGTERM (`dvc queue kill`, schedulers, torchrun) and SIGINT (Ctrl-C). A stage that checks stop_point() between
# batches (train) defers them: an exception raised wherever a signal lands can leave a lock held inside a
# library (logging's handler locks, a database session), and MLflow's system-metrics thread, which end_run
# waits for, then blocks forever; between two batches no library code is running. Other stages stop at once.
STOP = {"signal": None}


class ForeignCodeError(ValueError):
    """Python imported this package from another copy than the project's own src/."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """A running stage: its name (= module = dvc.yaml stage = params.yaml section) and the checked params."""

    name: str
    params: dict

    @property
    def section(self):
        return self.params[self.name]

    @property
    def metrics_file(self):
        return paths.metrics(self.name)

    def mlflow_name(self, key):
        """The key's name in MLflow: <name>/<key> (train's unprefixed: the run is train's)."""
        return key if self.name == "train" else f"{self.name}/{key}"

    def publish(self, run, metrics, artifacts=(), tags=None, headline=()):
        """The stage's results, by one rule: every value to metrics/<name>.json (what later stages and tests
        read); the `headline` keys, named as in MLflow, to metrics/headline/<name>.json, the file dvc.yaml
        declares as metrics, so `dvc exp show` and `dvc metrics show` stay a readable table of the figures
        experiments are compared by; into the MLflow run, when there is one, every number under its MLflow name,
        `tags` as tags, and each artifact into the folder <name>/, or the folder of a (path, folder) pair."""
        files.write_json(self.metrics_file, metrics)
        files.write_json(paths.headline(self.name), {self.mlflow_name(k): metrics[k] for k in headline})
        if run is None:
            return
        import mlflow

        # Numbers only: None (a figure not measured) stays out, strings (robustness' level) are tags.
        mlflow.log_metrics({self.mlflow_name(k): v for k, v in metrics.items() if isinstance(v, (int, float))})
        if tags:
            mlflow.set_tags(tags)
        for artifact in artifacts:
            path, folder = artifact if isinstance(artifact, tuple) else (artifact, self.name)
            mlflow.log_artifact(str(path), folder)


def begin(name):
    """This project's own code, params.yaml checked whole, the installed packages those uv.lock pins, the
    stage's dvc.yaml inputs present, its output locations writable with room (leftovers of an interrupted write
    removed); returns the Stage. The tracking store is checked as the stage opens its run (store.connect), also
    before any work."""
    check_own_code()
    p = params.load()
    if differs := environment.check():  # only returned with ALLOW_LOCK_MISMATCH=1
        print(f"{name}: running although the environment differs from {environment.LOCK} ({environment.ALLOW}=1): "
              f"{environment.described(differs)}", file=sys.stderr)
    spec = files.stage_spec(name)  # dvc.yaml read once: the inputs it needs, the outputs it writes
    files.require(name, spec)
    files.preflight(spec)
    return Stage(name, p)


def check_own_code(package_dir=None, env=os.environ):
    """Stop when the package was imported from elsewhere than the project's src/ (another project of the same
    package name installed in this environment, a stale editable install): dvc.yaml hashes this project's code,
    so running another copy would record results under the wrong code. Queued and --temp experiments run in a
    copy under .dvc/tmp/exps, whose code is the main repository's (DVC_ROOT) or its own; a directory without
    src/<package> (a scratch copy) is not checked."""
    package_dir = package_dir or Path(__file__).resolve().parents[1]  # lib/ -> the package
    roots = {Path.cwd().resolve(), Path(env.get("DVC_ROOT") or Path.cwd()).resolve()}
    own = [(r / "src" / package_dir.name).resolve() for r in roots if (r / "src" / package_dir.name).is_dir()]
    if own and package_dir not in own:
        raise ForeignCodeError(f"python imported {package_dir.name} from {package_dir}, not this project's "
                               f"{own[0]}; install this project into the environment you run it from "
                               "(pip install -e .) or activate its own environment")


def request_stop(signum, frame):
    if STOP["signal"]:  # asked twice: stop now, wherever we are
        raise KeyboardInterrupt(f"{STOP['signal']} received twice")
    STOP["signal"] = signal.Signals(signum).name
    # os.write, not print: the signal may have interrupted a print on the same stream.
    os.write(2, f"{STOP['signal']} received, stopping after this batch (again: at once)\n".encode())


def interrupt(signum, frame):
    STOP["signal"] = signal.Signals(signum).name
    raise KeyboardInterrupt(f"{STOP['signal']} received")


def stop_point(outcome="no output half written, any MLflow run ended KILLED"):
    """Raise KeyboardInterrupt here if a deferred signal arrived."""
    if STOP["signal"]:
        raise KeyboardInterrupt(f"{STOP['signal']} received; {outcome}")


def checked(iterable):
    """Iterate, honouring a deferred signal before each item (a batch)."""
    for item in iterable:
        stop_point()
        yield item


# Without a terminal (a log file, a batch job) tqdm draws no bar; a plain line this often shows the work moves.
# A constant, not a param: params sections are DVC dependencies, and how often a log is written should not
# rerun a stage.
PROGRESS_EVERY_S = 30


def progress(iterable, what, unit="batch"):
    """A tqdm bar labelled `what` in a terminal; without one (a log file, a batch job) reported()'s lines, from
    one process under torchrun."""
    bar = tqdm(iterable, desc=what, unit=unit, leave=False, disable=None)  # disable=None: no bar without a terminal
    if bar.disable and os.environ.get("RANK", "0") == "0":
        return reported(iterable, what, len(iterable), unit=unit)
    return bar


def reported(iterable, what, total, every=PROGRESS_EVERY_S, clock=time.monotonic, unit="batch"):
    """Iterate, printing a progress_line to stdout every `every` seconds (of `clock`) as items are done: the
    progress a log file gets where tqdm's bar is off."""
    start = last = clock()
    for done, item in enumerate(iterable, 1):
        yield item
        if (now := clock()) - last >= every:  # the item's work is done once the next one is asked for
            last = now
            print(progress_line(what, done, total, now - start, unit), flush=True)


def progress_line(what, done, total, elapsed, unit="batch"):
    """'train: epoch 3/12, batch 120/400 (30%) after 45 s, ~105 s to go' (the rest at the pace so far)."""
    return (f"{what}, {unit} {done}/{total} ({100 * done // total}%) after {elapsed:.0f} s, "
            f"~{elapsed * (total - done) / done:.0f} s to go")


def handled(e):
    mlflow_errors = sys.modules.get("mlflow.exceptions")  # an MlflowException only exists once mlflow is imported
    return isinstance(e, HANDLED) or (mlflow_errors is not None and isinstance(e, mlflow_errors.MlflowException))


def committed(candidates, cwd="."):
    """Those of `candidates` (paths) that git's HEAD holds; [] outside git or before the first commit."""
    try:
        listed = subprocess.run(["git", "ls-tree", "--name-only", "HEAD", "--", *candidates], cwd=cwd,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = set(listed.stdout.split()) if listed.returncode == 0 else set()
    return [c for c in candidates if c in found]


def recovery(name, env=os.environ):
    """The line after a failure of a stage DVC ran, or None when run by hand (the previous outputs are still
    there: they are replaced whole or not at all). DVC deletes a stage's outputs before running it, so a failed
    stage has none; `check` fails before DVC reaches any other stage."""
    if not env.get("DVC_STAGE"):
        return None
    if Path(env.get("DVC_ROOT") or Path.cwd()).resolve() != Path.cwd().resolve():
        return (f"{name}: what to do now: fix the cause above and run the experiment again; it ran in DVC's "
                "temporary copy (dvc exp run --temp / --queue), your workspace is untouched")
    if name == "check":
        return (f"{name}: what to do now: fix what the line above names, then `dvc repro`; no other stage ran, "
                "every output is in place (to undo a `dvc exp run -S` instead: `git checkout params.yaml && "
                "dvc checkout`)")
    written = [str(w).rstrip("/") for w in paths.PIPELINE_WRITTEN]
    back = committed([str(paths.PARAMS), *written])
    restore = f"git checkout HEAD -- {' '.join(back)} && dvc checkout" if back else "dvc checkout"
    return (f"{name}: what to do now: DVC removed this stage's outputs before running it; fix the cause above "
            f"and `dvc repro`, or get back the last commit's params and outputs: `{restore}`")


def explained(e):
    """The user's one line for a handled error."""
    message = str(e)
    if not isinstance(e, (ValueError, OSError, ConnectionError)):  # MLflow's: may carry a whole HTML error page
        message = " ".join(message.split())[:500]
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) and not e.filename:
        message += (f"; a disk this stage writes to is full (the project's models/ or mlruns/, or the temporary "
                    f"folder {tempfile.gettempdir()}: `df -h` shows which): free some space and run it again")
    return f"{type(e).__name__}: {message}"


def run(name, main, defer_signals=False):
    """Run a stage's main() as a process: exit 0; 1 with one line `<stage>: <Error>: <message>`; 128 + the
    signal's number when stopped by SIGTERM / SIGINT, as a shell reports death by that signal. Under DVC every
    failure, a bug's traceback included, ends with recovery()'s line."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop if defer_signals else interrupt)
    try:
        main()
    except KeyboardInterrupt as e:
        print("\n".join(filter(None, (f"{name}: stopped: {e or 'interrupted'}", recovery(name)))), file=sys.stderr)
        sys.exit(128 + signal.Signals[STOP["signal"] or "SIGINT"])
    except Exception as e:
        advice = recovery(name)
        if not handled(e):
            if advice is None:
                raise
            traceback.print_exc()  # a bug keeps its traceback, followed by what to do now
            sys.exit(advice)
        sys.exit("\n".join(filter(None, (f"{name}: {explained(e)}", advice))))
