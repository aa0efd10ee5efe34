"""Bad answers: one line naming the field and the rule, and nothing generated."""

import runpy

import pytest
from cookiecutter.exceptions import FailedHookException

from conftest import TEMPLATE, bake

pytestmark = pytest.mark.fast


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
    # credentials belong in the environment, never in a file that is committed
    ({"mlflow_tracking_uri": "postgresql+psycopg://mlflow:hunter2@db:5432/mlflow"}, "mlflow_tracking_uri"),
    ({"mlflow_tracking_uri": "http://alice:hunter2@mlflow.example.com"}, "mlflow_tracking_uri"),
    ({"mlflow_tracking_uri": "https://mlflow.example.com/?token=hunter2"}, "mlflow_tracking_uri"),
    ({"dvc_remote": "https://alice:hunter2@dav.example.com/store"}, "dvc_remote"),
    ({"dvc_remote": "ssh://alice:hunter2@host/store"}, "dvc_remote"),
    # names Windows reserves for devices, and names that would break a one-line field
    ({"project_slug": "con", "package_name": "ok_pkg"}, "project_slug"),
    ({"project_slug": "nul", "package_name": "ok_pkg"}, "project_slug"),
    ({"project_slug": "aux", "package_name": "ok_pkg"}, "project_slug"),
    ({"project_slug": "com1", "package_name": "ok_pkg"}, "project_slug"),
    ({"project_slug": "lpt9", "package_name": "ok_pkg"}, "project_slug"),
    ({"package_name": "prn"}, "package_name"),
    ({"project_name": "Two\nlines", "project_slug": "two-lines"}, "project_name"),
    ({"author_name": "Tab\there"}, "author_name"),
])
def test_bad_answer_is_rejected_by_name(tmp_path, capfd, answers, field):
    with pytest.raises(FailedHookException):
        bake(tmp_path, **answers)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ERROR:")]
    assert len(lines) == 1 and lines[0].startswith(f"ERROR: {field}="), err
    assert list(tmp_path.iterdir()) == []  # no half-generated project left behind
    assert "hunter2" not in err  # a password is never printed back


@pytest.mark.parametrize("uri", ["postgresql+psycopg://mlflow@db:5432/mlflow", "http://mlflow.example.com:5000",
                                 "https://alice@mlflow.example.com"])
def test_uris_without_a_password_are_accepted(tmp_path, uri):
    project = bake(tmp_path, mlflow_tracking_uri=uri, init_git=False)
    assert uri in (project / "params.yaml").read_text()


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
    package = TEMPLATE / "{{cookiecutter.project_slug}}" / "src" / "{{cookiecutter.package_name}}"
    names = runpy.run_path(str(package / "lib" / "names.py"))
    with pytest.raises(FailedHookException):
        bake(tmp_path, architecture="NoSuchNet")
    assert ", ".join(names["SEGMENTATION_ARCHITECTURES"]) in capfd.readouterr().err
    project = bake(tmp_path, task="classification", architecture=names["CLASSIFICATION_ARCHITECTURES"][-1],
                   init_git=False)
    assert (project / "params.yaml").exists()
