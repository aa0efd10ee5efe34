"""The baked project's own test suite passes, for each task."""

import subprocess
import sys

import pytest

from conftest import project_env


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_baked_project_tests_pass(baked, task):
    project = baked(task)
    # Multi-process training does not depend on the task: its two-process test runs in one of the two suites.
    select = ["-k", "not gloo"] if task == "classification" else []
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *select], cwd=project,
                            env=project_env(project), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
