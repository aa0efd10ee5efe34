"""Re-lock the template: its own dev environment and the lock every baked project starts with.

    .venv/bin/python scripts/lock.py            # keep the locked versions where they still fit
    .venv/bin/python scripts/lock.py --upgrade  # newest versions within requirements-dev.txt's pins

Run after changing requirements-dev.txt or the generated pyproject.toml; needs uv and the package index.
Writes requirements-dev.lock (hash-pinned, what scripts/venv.sh installs) and, for each task and Python floor,
templates/uv/<task>-py<floor>.lock and .requirements.txt: a baked project's uv.lock and its pip export, with
the project's name left as a Jinja variable. Nothing in a project's lock is newer than requirements-dev.txt's
`==` pins (the versions the template is tested with). tests/test_lock.py checks that every bake's lock agrees
with its pyproject.toml. A floor needs an interpreter at least that new (`uv python find`).
"""

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cookiecutter.main import cookiecutter

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("segmentation", "classification")
DEV_PYTHON = "3.11"  # the dev lock's floor (onnxruntime 1.32 needs 3.11)
PLACEHOLDER = "locked-project-placeholder"  # a name no package on the index has; becomes the project's name
# No "# via" annotations: they name the project, and at its name's place in the alphabet.
EXPORT = ["export", "--frozen", "--no-emit-project", "--no-annotate", "--output-file=requirements.txt", "--quiet"]


def floors():
    # The floors pre_gen_project.py accepts; the hook is a Jinja template, so read its literal.
    text = (ROOT / "hooks" / "pre_gen_project.py").read_text()
    return re.search(r"^LOCKED_PYTHONS = (\(.*\))$", text, re.M)[1].strip("()").replace('"', "").split(", ")


def uv(*args, cwd, python=None):
    subprocess.run(["uv", *args, *(["--python", python] if python else [])], cwd=cwd, check=True)


def constraints():
    """requirements-dev.txt's `==` pins as caps: a project never starts on a newer torch, mlflow, ... than the
    template is tested with. (Pinning every version of the dev lock instead splits the resolution on its
    markers: a lock six times the size.)"""
    pins = (re.match(r"([A-Za-z0-9._-]+)(?:\[[^]]*\])?==(\S+)$", line.strip())
            for line in (ROOT / "requirements-dev.txt").read_text().splitlines())
    return [f"{m[1]}<={m[2]}" for m in pins if m]


def python_for(floor):
    """An interpreter the project accepts: uv refuses to lock with an older one than requires-python."""
    found = subprocess.run(["uv", "python", "find", f">={floor}"], capture_output=True, text=True)
    if found.returncode:
        sys.exit(f"no Python >= {floor} found by `uv python find`: install one (`uv python install {floor}`)")
    return found.stdout.strip()


def lock_project(task, floor, upgrade, out):
    lock, txt = out / f"{task}-py{floor}.lock", out / f"{task}-py{floor}.requirements.txt"
    for f in (lock, txt):  # the bake includes them: empty the first time
        f.touch()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(cookiecutter(str(ROOT), no_input=True, output_dir=tmp, extra_context={
            "project_slug": PLACEHOLDER, "task": task, "python_version": floor, "init_git": False}))
        if lock.exists() and lock.stat().st_size and not upgrade:  # the previous lock as the resolver's preferences
            (project / "uv.lock").write_text(lock.read_text().replace("{{ cookiecutter.project_slug }}", PLACEHOLDER))
        else:
            (project / "uv.lock").unlink(missing_ok=True)
        pyproject = project / "pyproject.toml"
        shipped = pyproject.read_text()
        # Pass 1 with the constraints, pass 2 without: the lock keeps pass 1's versions as preferences and
        # records no constraint that a project would then carry forever.
        pyproject.write_text(shipped + "\n[tool.uv]\nconstraint-dependencies = [\n"
                             + "".join(f"    {json.dumps(c)},\n" for c in constraints()) + "]\n")
        python = python_for(floor)
        uv("lock", "--quiet", *(["--upgrade"] if upgrade else []), cwd=project, python=python)
        pyproject.write_text(shipped)
        uv("lock", "--quiet", cwd=project, python=python)
        uv(*EXPORT, cwd=project)
        for src, dst in ((project / "uv.lock", lock), (project / "requirements.txt", txt)):
            text = src.read_text()
            assert not re.search(r"\{[{%#]", text), f"{src.name} holds Jinja syntax"
            dst.write_text(text.replace(PLACEHOLDER, "{{ cookiecutter.project_slug }}"))
        print(f"locked {task} python>={floor}: {lock.relative_to(ROOT)} ({lock.stat().st_size // 1024} KiB)")


def main():
    upgrade = "--upgrade" in sys.argv[1:]
    uv("pip", "compile", "--quiet", "requirements-dev.txt", "--universal", "--python-version", DEV_PYTHON,
       "--generate-hashes", "-o", "requirements-dev.lock", *(["--upgrade"] if upgrade else []), cwd=ROOT)
    out = ROOT / "templates" / "uv"
    out.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        for floor in floors():
            lock_project(task, floor, upgrade, out)


if __name__ == "__main__":
    main()
