"""The baked project's own test suite passes, for each task."""

import subprocess
import sys

import pytest

from conftest import project_env

pytestmark = pytest.mark.pipeline


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_baked_project_tests_pass(baked, task):
    project = baked(task)
    # The classification pipeline's stages run whole in test_server.py, and the process-level tests (fresh
    # interpreters, signals, parallel stores, torchrun) and the ONNX runtime's serving checks do not depend on the
    # task (the project's pyproject.toml markers): the second suite keeps the task-specific tests.
    select = ["-m", "not process and not stage and not onnx"] if task == "classification" else []
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *select], cwd=project,
                            env=project_env(project), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
