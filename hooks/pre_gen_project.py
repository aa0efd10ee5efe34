"""Reject bad answers before anything is generated: one line naming the field and the rule."""

import keyword
import re
import sys

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
TRACKING_SCHEMES = ("sqlite:///", "http://", "https://", "postgresql://", "postgresql+psycopg://",
                    "mysql://", "mysql+pymysql://", "mssql://", "databricks")


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
    if not a["architecture"].strip():
        yield ("architecture", "must not be empty (e.g. 'Unet' for segmentation, 'resnet18' for classification)")
    if a["task"] == "segmentation" and a["encoder"] in ("", "none"):
        yield ("encoder", "segmentation needs an encoder, e.g. 'resnet18'")
    uri = a["mlflow_tracking_uri"]
    if not uri.startswith(TRACKING_SCHEMES) or re.search(r"\s", uri):
        yield ("mlflow_tracking_uri", "must start with one of " + ", ".join(TRACKING_SCHEMES)
               + " (default 'sqlite:///mlflow.db'; the './mlruns' file store is legacy in MLflow 3)")
    if re.search(r"\s", a["dvc_remote"]):
        yield ("dvc_remote", "must be a URL or path without spaces (e.g. 's3://bucket/path' or '/mnt/dvc-store'), "
               "or empty for none")


errors = list(problems(ANSWERS))
for field, rule in errors:
    print(f"ERROR: {field}={ANSWERS[field]!r}: {rule}", file=sys.stderr)
sys.exit(1 if errors else 0)
