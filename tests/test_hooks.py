"""Bad answers: one line naming the field and the rule, and nothing generated."""

import runpy

import pytest
from cookiecutter.exceptions import FailedHookException

from conftest import TEMPLATE, bake


@pytest.mark.parametrize("answers,field", [
    ({"project_slug": "Bad Slug", "package_name": "ok_pkg"}, "project_slug"),
    ({"project_slug": "1-starts-with-digit", "package_name": "ok_pkg"}, "project_slug"),
    ({"project_slug": "double--hyphen"}, "project_slug"),
    ({"package_name": "my-package"}, "package_name"),
    ({"package_name": "class"}, "package_name"),
    ({"package_name": "torch"}, "package_name"),
    ({"package_name": "json"}, "package_name"),
    ({"python_version": "3.9"}, "python_version"),
    ({"python_version": "three"}, "python_version"),
    ({"mlflow_tracking_uri": "./mlruns"}, "mlflow_tracking_uri"),
    ({"mlflow_tracking_uri": "file:///tmp/mlruns"}, "mlflow_tracking_uri"),
    ({"mlflow_tracking_uri": "ftp://host"}, "mlflow_tracking_uri"),
    ({"dvc_remote": "/path with spaces"}, "dvc_remote"),
    ({"encoder": "none"}, "encoder"),
    ({"architecture": " "}, "architecture"),
    ({"architecture": "NoSuchNet"}, "architecture"),
    ({"task": "classification", "architecture": "Unet"}, "architecture"),
    ({"encoder": "resnet19"}, "encoder"),
])
def test_bad_answer_is_rejected_by_name(tmp_path, capfd, answers, field):
    with pytest.raises(FailedHookException):
        bake(tmp_path, **answers)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ERROR:")]
    assert len(lines) == 1 and lines[0].startswith(f"ERROR: {field}="), err
    assert list(tmp_path.iterdir()) == []  # no half-generated project left behind


def test_bad_choice_generates_nothing(tmp_path):
    with pytest.raises(ValueError):
        bake(tmp_path, task="regression")
    assert list(tmp_path.iterdir()) == []


def test_several_bad_answers_are_all_reported(tmp_path, capfd):
    with pytest.raises(FailedHookException):
        bake(tmp_path, project_slug="Bad Slug", python_version="2.7")
    err = capfd.readouterr().err
    assert "ERROR: project_slug=" in err and "ERROR: python_version=" in err


def test_the_hook_and_the_project_accept_the_same_names(tmp_path, capfd):
    # One source: the hook reads the generated project's names.py, so every name it lists is one params.py takes.
    names = runpy.run_path(str(TEMPLATE / "{{cookiecutter.project_slug}}/src/{{cookiecutter.package_name}}/names.py"))
    with pytest.raises(FailedHookException):
        bake(tmp_path, architecture="NoSuchNet")
    assert ", ".join(names["SEGMENTATION_ARCHITECTURES"]) in capfd.readouterr().err
    project = bake(tmp_path, task="classification", architecture=names["CLASSIFICATION_ARCHITECTURES"][-1],
                   init_git=False)
    assert (project / "params.yaml").exists()
