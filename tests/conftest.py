"""Bake the template the way users do, and give tests an environment in which the baked project runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
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


# Files whose few tests run whole pipelines, longest first. xdist hands a worker a whole file (--dist loadfile)
# and would order files by their number of tests, leaving these to start last and run alone at the end; started
# first, the many short files fill the other worker around them (pytest.ini turns xdist's reordering off).
LONGEST_FIRST = ("test_pipeline.py", "test_server.py", "test_container.py", "test_team.py", "test_project.py",
                 "test_bad_input.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file is kept


def bake(output_dir, **context):
    """Generate a project with the given answers (the rest default); returns its directory."""
    return Path(cookiecutter(str(TEMPLATE), no_input=True, extra_context=context, output_dir=str(output_dir)))


STAGES = ("prepare", "train", "analyze", "optimize", "robustness", "register")


def sh(project, *cmd, ok=True, env=None):
    """Run a command of the baked project (dvc, mlflow, git, ...) with `env` added to its environment; assert it
    succeeded (or failed, ok=False)."""
    result = subprocess.run(cmd, cwd=project, env=project_env(project, **(env or {})), capture_output=True, text=True)
    assert (result.returncode == 0) == ok, f"{' '.join(cmd)}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def project_env(project, **extra):
    """The baked project's commands (dvc, python -m <pkg>.<stage>) run from this venv, importing its src/."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(project / "src"),
               MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.fixture(scope="session")
def baked(tmp_path_factory):
    """One default project per task, shared by the tests that only read it."""
    cache = {}

    def get(task):
        if task not in cache:
            cache[task] = bake(tmp_path_factory.mktemp(task), task=task)
        return cache[task]

    return get
