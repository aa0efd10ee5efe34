"""The locked environments: every bake's uv.lock agrees with its pyproject.toml, offline; requirements.txt is
its export; `uv sync --frozen` installs exactly the lock, in which the project's own tests pass; the template's
dev lock holds what requirements-dev.txt asks for."""

import itertools
import os
import re
import shutil
import subprocess
import tomllib

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import BIN, TEMPLATE, bake

UV = shutil.which("uv", path=str(BIN)) or shutil.which("uv")
TASKS = ("segmentation", "classification")
FLOORS = re.search(r"^LOCKED_PYTHONS = \((.*)\)$", (TEMPLATE / "hooks/pre_gen_project.py").read_text(),
                   re.M)[1].replace('"', "").split(", ")
# The same command as the generated Makefile's `make lock`, CI and pre-commit hook.
EXPORT = ["export", "--frozen", "--no-emit-project", "--no-annotate", "--output-file=requirements.txt", "--quiet"]
# Never newer than what the template is tested with (requirements-dev.txt).
CAPS = {"torch": "2.14.1", "torchvision": "0.29.1"}


def uv_env(offline=True):
    # The user's uv cache (warm from scripts/venv.sh: the 3.11 locks hold the dev lock's versions); no
    # interpreter downloads; offline unless installing.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_OFFLINE", "UV_PYTHON")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", UV_PYTHON_DOWNLOADS="never",
               **({"UV_OFFLINE": "1"} if offline else {}))
    return env


def uv(project, *args, offline=True):
    result = subprocess.run([UV, *args], cwd=project, capture_output=True, text=True, env=uv_env(offline))
    assert result.returncode == 0, f"uv {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def python_at_least(floor):
    """An interpreter uv accepts for a project with this floor (uv refuses to lock with an older one)."""
    found = subprocess.run([UV, "python", "find", f">={floor}"], capture_output=True, text=True, env=uv_env())
    if found.returncode:
        pytest.skip(f"no Python >= {floor} on this machine for `uv lock --check` (uv python install {floor})")
    return found.stdout.strip()


def locked(project):
    """{name: {versions}} of uv.lock."""
    out = {}
    for package in tomllib.loads((project / "uv.lock").read_text())["package"]:
        out.setdefault(package["name"], set()).add(package["version"])
    return out


@pytest.mark.fast
def test_a_lock_for_every_task_and_floor_and_nothing_else():
    carried = {p.name for p in (TEMPLATE / "templates/uv").iterdir()}
    assert carried == {f"{t}-py{f}.{kind}" for t, f in itertools.product(TASKS, FLOORS)
                       for kind in ("lock", "requirements.txt")}


@pytest.mark.fast
@pytest.mark.parametrize("task,floor", list(itertools.product(TASKS, FLOORS)))
def test_every_bake_is_locked_and_the_lock_agrees_offline(tmp_path, task, floor):
    # A name late in the alphabet: the carried lock puts the project's entry where the placeholder sorted.
    project = bake(tmp_path, project_slug="zz-locked", task=task, python_version=floor, init_git=False)
    uv(project, "lock", "--check", "--python", python_at_least(floor))
    lock = tomllib.loads((project / "uv.lock").read_text())
    assert lock["requires-python"] == f">={floor}"
    versions = locked(project)
    assert "zz-locked" in versions
    assert ("segmentation-models-pytorch" in versions) == (task == "segmentation")
    for name, cap in CAPS.items():
        assert all(Version(v) <= Version(cap) for v in versions[name]), (name, versions[name])
    # requirements.txt is the lock's export, every requirement pinned and hashed (pip --require-hashes).
    shipped = (project / "requirements.txt").read_text()
    uv(project, *EXPORT)
    assert (project / "requirements.txt").read_text() == shipped
    pins = re.findall(r"^([A-Za-z0-9._-]+)==(\S+)(?: ;[^\\\n]*)? \\\n\s+--hash=sha256:", shipped, re.M)
    requirements = [line for line in shipped.splitlines() if line and not line.startswith((" ", "#"))]
    assert len(pins) == len(requirements) > 100


@pytest.mark.pipeline
def test_sync_frozen_installs_exactly_the_lock_and_the_projects_tests_pass(tmp_path):
    # Classification: the lock without smp, so its tests show the project needs nothing the lock lacks.
    project = bake(tmp_path, task="classification", init_git=False)
    package = project.name.replace("-", "_")
    uv(project, "sync", "--frozen", "--quiet", "--python", python_at_least("3.11"), offline=False)
    python = project / ".venv/bin/python"
    # Installed = the lock's versions of what applies here (markers evaluated on this interpreter).
    export = uv(project, "export", "--frozen", "--no-emit-project", "--no-hashes", "--no-annotate", "--no-header")
    expected = {}
    for line in export.splitlines():
        req = Requirement(line)
        if req.marker is None or Marker(str(req.marker)).evaluate():
            expected[req.name] = str(req.specifier).removeprefix("==")
    frozen = uv(project, "pip", "freeze", "--python", str(python), "--exclude-editable")
    installed = dict(line.split("==") for line in frozen.splitlines())
    assert installed == expected
    check = subprocess.run([python, "-c", f"from {package}.lib import environment; print(environment.lock_matches())"],
                           cwd=project, capture_output=True, text=True)
    assert check.stdout.strip() == "true", check.stderr
    tests = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_environment.py",
                            "tests/test_models.py"], cwd=project, capture_output=True, text=True,
                           env={"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(tmp_path),
                                "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"})
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]


@pytest.mark.fast
def test_dev_lock_holds_what_requirements_dev_asks_for():
    lock = (TEMPLATE / "requirements-dev.lock").read_text()
    pinned = {}
    for name, version, marker in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)(?: ; ([^\\\n]*))? \\$", lock, re.M):
        if not marker or Marker(marker).evaluate():
            pinned[name.lower()] = version
    for line in (TEMPLATE / "requirements-dev.txt").read_text().splitlines():
        line = line.split(" #")[0].strip()  # pip's comment syntax: whole lines and " # ..." after a requirement
        if line and not line.startswith("#"):
            req = Requirement(line)
            assert req.specifier.contains(pinned[req.name.lower()]), (line, pinned.get(req.name.lower()))
    assert re.search(r"^uv==", lock, re.M)  # venv.sh bootstraps this uv, and sync must not remove it
