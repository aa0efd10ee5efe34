"""What the template's tests and the benchmarks share: bake the template the way users do, run the baked project's
commands in an environment where it runs, and the two network chores (a free port, waiting for a server).
Plain functions, no pytest: benchmarks/ imports this module, tests through conftest.py."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Pipeline params small enough for a test: every stage runs, in about a minute on 2 cores.
TINY = {"prepare": {"image_size": 32, "synthetic_images": 40}, "train": {"epochs": 2, "batch_size": 8},
        "analyze": {"batch_size": 2, "warmup": 1, "runs": 5},
        "optimize": {"quantization": {"enabled": True, "calibration_images": 8, "calibration_batch_size": 8},
                     # 5 timed runs are noise: the reliability verdict is tested on its own, not here
                     "latency": {"batch_size": 2, "warmup": 1, "runs": 5, "remeasure": 0,
                                 "reliability": {"max_p90_p50": 1000, "max_interval_width": 1000}}},
        "robustness": {"subset": 8, "epsilons": [0, 4], "declared_epsilon": 4, "pgd": {"steps": 2, "step_size": 0.5},
                       "corruptions": ["gaussian_noise", "jpeg"], "severities": [1], "bootstrap_resamples": 50},
        # Two epochs on 40 images: quality gates the tiny model can pass; the security gate stays as shipped.
        "register": {"gates": {"min_quality": 0.0, "max_latency_ms": 10000, "min_robustness_score": 0.0,
                               "max_quality_drop": 1.0, "block_severity": "high"}}}

STAGES = ("prepare", "train", "analyze", "optimize", "robustness", "register")


def bake(output_dir, **context):
    """Generate a project with the given answers (the rest default); returns its directory."""
    return Path(cookiecutter(str(TEMPLATE), no_input=True, extra_context=context, output_dir=str(output_dir)))


def sh(project, *cmd, ok=True, env=None):
    """Run a command of the baked project (dvc, mlflow, git, ...) with `env` added to its environment; assert it
    succeeded (or failed, ok=False)."""
    result = subprocess.run(cmd, cwd=project, env=project_env(project, **(env or {})), capture_output=True, text=True)
    assert (result.returncode == 0) == ok, f"{' '.join(cmd)}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def project_env(project, **extra):
    """The baked project's commands (dvc, python -m <pkg>.<stage>) run from this venv, importing its src/."""
    # ALLOW_LOCK_MISMATCH too: the dev venv holds the project locks' versions, so no test needs it, and one set
    # in the caller's shell would hide the stop tests/test_bad_input.py checks.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "ALLOW_LOCK_MISMATCH"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(project / "src"),
               MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def free_port():
    """A loopback port nothing listens on (for a server to start on, or for a client to find closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url, proc, seconds=120, log=None):
    """Return once a GET of `url` gets an HTTP answer; fail if `proc` (the server) exits first or `seconds` pass,
    with the end of the server's `log` file when given."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, f"{url} did not come up" + (
                f"; its log ends:\n{log.read_text(errors='replace')[-3000:]}" if log else "")
            time.sleep(0.5)
