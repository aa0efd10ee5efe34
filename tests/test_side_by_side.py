"""Two projects in one environment: default names that follow the task, and a stage that refuses another copy."""

import os
import subprocess
import sys

import pytest
import yaml

from conftest import bake, project_env

pytestmark = pytest.mark.fast


def _prepare(project, pythonpath):
    env = {**project_env(project), "PYTHONPATH": os.pathsep.join(str(p / "src") for p in pythonpath)}
    return subprocess.run([sys.executable, "-m", f"{project.name.replace('-', '_')}.prepare"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)


def test_default_names_follow_the_task_and_each_project_runs_its_own_code(tmp_path):
    seg = bake(tmp_path / "a", init_git=False)
    cls = bake(tmp_path / "b", task="classification", init_git=False)
    assert (seg.name, cls.name) == ("shapes-segmentation", "shapes-classification")
    names = [yaml.safe_load((p / "params.yaml").read_text()) for p in (seg, cls)]
    assert names[0]["mlflow"]["experiment"] != names[1]["mlflow"]["experiment"]
    assert names[0]["register"]["model_name"] != names[1]["register"]["model_name"]
    for project in (seg, cls):  # both packages importable at once, each stage imports its own
        result = _prepare(project, [seg, cls])
        assert result.returncode == 0, result.stderr
        assert (project / "data/prepared/dataset.json").exists()


def test_a_stage_refuses_another_project_s_copy_of_its_package(tmp_path):
    # Two projects baked with the same names (an old editable install, a copied project): the one on the path
    # is not the one whose dvc.yaml and code the results would be recorded under.
    first = bake(tmp_path / "a", task="classification", init_git=False)
    second = bake(tmp_path / "b", task="classification", init_git=False)
    result = _prepare(second, [first])
    assert result.returncode == 1 and not (second / "data/prepared").exists()
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("prepare: ForeignCodeError: python imported shapes_classification from "
                           f"{first / 'src' / 'shapes_classification'}, not this project's "
                           f"{second / 'src' / 'shapes_classification'}"), line
