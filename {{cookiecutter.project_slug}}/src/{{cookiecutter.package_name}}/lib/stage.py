"""The start and end every stage shares: params and inputs checked before work, signals, and one line plus an
exit code for every error a user can cause. Each stage module ends with

    if __name__ == "__main__":
        stage.run("train", main)

Not a framework: a stage's main() stays an ordinary function that tests call in-process (where the caller keeps
its own signal handlers and sees exceptions as exceptions).
"""

import dataclasses
import os
import signal
import sys
from pathlib import Path

from {{ cookiecutter.package_name }}.lib import files, params, paths

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

    def publish(self, run, metrics, artifacts=(), tags=None):
        """The stage's results, by one rule: every value to metrics/<name>.json (what `dvc metrics show` and `dvc
        exp show` read); into the MLflow run, when there is one, the numbers as <name>/<key> (train's unprefixed:
        the run is train's), `tags` as tags, and each artifact into the folder <name>/, or the folder of a
        (path, folder) pair."""
        files.write_json(self.metrics_file, metrics)
        if run is None:
            return
        import mlflow

        prefix = "" if self.name == "train" else f"{self.name}/"
        # Numbers only: None (a figure not measured) stays out, strings (robustness' level) are tags.
        mlflow.log_metrics({prefix + k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        if tags:
            mlflow.set_tags(tags)
        for artifact in artifacts:
            path, folder = artifact if isinstance(artifact, tuple) else (artifact, self.name)
            mlflow.log_artifact(str(path), folder)


def begin(name):
    """This project's own code, params.yaml checked whole, the stage's dvc.yaml inputs present, its output
    locations writable with room (leftovers of an interrupted write removed); returns the Stage. The tracking
    store is checked as the stage opens its run (store.connect), also before any work."""
    check_own_code()
    p = params.load()
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


def handled(e):
    mlflow_errors = sys.modules.get("mlflow.exceptions")  # an MlflowException only exists once mlflow is imported
    return isinstance(e, HANDLED) or (mlflow_errors is not None and isinstance(e, mlflow_errors.MlflowException))


def run(name, main, defer_signals=False):
    """Run a stage's main() as a process: exit 0; 1 with one line `<stage>: <Error>: <message>`; 128 + the
    signal's number when stopped by SIGTERM / SIGINT, as a shell reports death by that signal."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop if defer_signals else interrupt)
    try:
        main()
    except KeyboardInterrupt as e:
        print(f"{name}: stopped: {e or 'interrupted'}", file=sys.stderr)
        sys.exit(128 + signal.Signals[STOP["signal"] or "SIGINT"])
    except Exception as e:
        if not handled(e):
            raise
        message = str(e)
        if not isinstance(e, (ValueError, OSError, ConnectionError)):  # MLflow's: may carry a whole HTML error page
            message = " ".join(message.split())[:500]
        sys.exit(f"{name}: {type(e).__name__}: {message}")
