"""Template updates: a project made with `cruft create` takes later template changes with `cruft update`."""

import shutil
import subprocess

import pytest

from conftest import BIN, TEMPLATE, project_env

pytestmark = pytest.mark.fast


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def cruft(cwd, *args, env=None):
    return subprocess.run([BIN / "cruft", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_cruft_create_then_update(tmp_path):
    # The template as a git repository of its own (the working tree, so uncommitted edits are tested too).
    template = tmp_path / "template"
    shutil.copytree(TEMPLATE, template, ignore=shutil.ignore_patterns(".git", ".venv", "build", "__pycache__",
                                                                       ".pytest_cache", ".ruff_cache"))
    git(template, "init", "-q", "-b", "main")
    git(template, "add", "-A")
    git(template, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "v1")
    env = project_env(tmp_path)
    created = cruft(tmp_path, "create", str(template), "--no-input", "--output-dir", str(tmp_path / "out"), env=env)
    assert created.returncode == 0, created.stdout + created.stderr
    project = tmp_path / "out" / "shapes-segmentation"
    assert (project / ".cruft.json").is_file()
    git(project, "add", ".cruft.json")
    git(project, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "link to the template")

    params = template / "{{cookiecutter.project_slug}}" / "params.yaml"
    params.write_text(params.read_text() + "# a later template change\n")
    git(template, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qam", "v2")
    assert cruft(project, "check", env=env).returncode != 0  # out of date
    updated = cruft(project, "update", "-y", env=env)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert (project / "params.yaml").read_text().endswith("# a later template change\n")
    assert cruft(project, "check", env=env).returncode == 0
