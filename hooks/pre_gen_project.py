"""Reject bad answers before anything is generated: one line naming the field and the rule."""

import keyword
import re
import runpy
import sys
from pathlib import Path

ANSWERS = {
    "project_slug": {{ cookiecutter.project_slug | tojson }},
    "package_name": {{ cookiecutter.package_name | tojson }},
    "python_version": {{ cookiecutter.python_version | tojson }},
    "task": {{ cookiecutter.task | tojson }},
    "architecture": {{ cookiecutter.architecture | tojson }},
    "encoder": {{ cookiecutter.encoder | tojson }},
    "mlflow_tracking_uri": {{ cookiecutter.mlflow_tracking_uri | tojson }},
    "dvc_remote": {{ cookiecutter.dvc_remote | tojson }},
}
# Package names that would shadow what the project imports.
SHADOWED = {"torch", "torchvision", "mlflow", "dvc", "numpy", "yaml", "safetensors", "tests", "test"}
# The Python floors the template carries a lock for (templates/uv/, made by scripts/lock.py). A floor is the
# oldest Python the project supports: the lock covers every newer one.
LOCKED_PYTHONS = ("3.10", "3.11", "3.12")
# The valid names are the generated project's own (names.py: plain data, no imports), read from the template.
# cookiecutter passes its folder as _repo_dir; tools that call cookiecutter's generate_files directly (cruft) do
# not, and then the project's own params check is the only one.
REPO = {{ cookiecutter._repo_dir | default("") | tojson }}
NAMES_PY = Path(REPO) / "{% raw %}{{cookiecutter.project_slug}}/src/{{cookiecutter.package_name}}/names.py{% endraw %}"
NAMES = runpy.run_path(str(NAMES_PY)) if REPO and NAMES_PY.is_file() else None


def problems(a):
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", a["project_slug"]):
        yield ("project_slug", "must be lowercase letters, digits and single hyphens, starting with a letter "
               "(e.g. 'shapes-segmentation')")
    pkg = a["package_name"]
    if not re.fullmatch(r"[a-z][a-z0-9_]*", pkg) or keyword.iskeyword(pkg):
        yield ("package_name", "must be a lowercase Python identifier, not a keyword (e.g. 'shapes_segmentation')")
    elif pkg in SHADOWED or pkg in sys.stdlib_module_names:
        yield ("package_name", f"'{pkg}' would shadow an installed module; choose another name")
    if a["python_version"] not in LOCKED_PYTHONS:
        yield ("python_version", f"must be one of {', '.join(LOCKED_PYTHONS)}: the floors the template carries a "
               "uv.lock for (a floor covers every newer Python; torch>=2.10 needs 3.10+)")
    if NAMES is not None:
        yield from name_problems(a)
    if re.search(r"\s", a["dvc_remote"]):
        yield ("dvc_remote", "must be a URL or path without spaces (e.g. 's3://bucket/path' or '/mnt/dvc-store'), "
               "or empty for none")


def name_problems(a):
    seg = a["task"] == "segmentation"
    architectures = NAMES["SEGMENTATION_ARCHITECTURES" if seg else "CLASSIFICATION_ARCHITECTURES"]
    if a["architecture"] not in architectures:
        yield ("architecture", f"valid {a['task']} architectures: {', '.join(architectures)}")
    if seg and a["encoder"] not in NAMES["ENCODERS"]:
        yield ("encoder", f"valid encoders: {', '.join(NAMES['ENCODERS'])}")
    uri = a["mlflow_tracking_uri"]
    if not uri.startswith(NAMES["TRACKING_SCHEMES"]) or re.search(r"\s", uri):
        yield ("mlflow_tracking_uri", "must start with one of " + ", ".join(NAMES["TRACKING_SCHEMES"])
               + " (default 'sqlite:///mlflow.db'; the './mlruns' file store is legacy in MLflow 3)")


errors = list(problems(ANSWERS))
for field, rule in errors:
    print(f"ERROR: {field}={ANSWERS[field]!r}: {rule}", file=sys.stderr)
sys.exit(1 if errors else 0)
