"""Reject bad answers before anything is generated: one line naming the field and the rule."""

import keyword
import re
import runpy
import sys
import unicodedata
from pathlib import Path

ANSWERS = {
    "project_name": {{ cookiecutter.project_name | tojson }},
    "author_name": {{ cookiecutter.author_name | tojson }},
    "project_slug": {{ cookiecutter.project_slug | tojson }},
    "package_name": {{ cookiecutter.package_name | tojson }},
    "python_version": {{ cookiecutter.python_version | tojson }},
    "task": {{ cookiecutter.task | tojson }},
    "architecture": {{ cookiecutter.architecture | tojson }},
    "encoder": {{ cookiecutter.encoder | tojson }},
    "mlflow_tracking_uri": {{ cookiecutter.mlflow_tracking_uri | tojson }},
    "dvc_remote": {{ cookiecutter.dvc_remote | tojson }},
}
# File names Windows reserves in every folder, with any extension (a clone there fails on them).
RESERVED = {"con", "prn", "aux", "nul", *(f"{p}{i}" for p in ("com", "lpt") for i in range(10))}
# Package names that would shadow what the project imports.
SHADOWED = {"torch", "torchvision", "mlflow", "dvc", "numpy", "yaml", "safetensors", "tests", "test"}
# The Python floors the template carries a lock for (templates/uv/, made by scripts/lock.py). A floor is the
# oldest Python the project supports: the lock covers every newer one.
LOCKED_PYTHONS = ("3.10", "3.11", "3.12")
# The valid names are the generated project's own (names.py: plain data, no imports), read from the template.
# cookiecutter passes its folder as _repo_dir; tools that call cookiecutter's generate_files directly (cruft) do
# not, and then the project's own params check is the only one.
REPO = {{ cookiecutter._repo_dir | default("") | tojson }}
NAMES_PY = Path(REPO) / "{% raw %}{{cookiecutter.project_slug}}/src/{{cookiecutter.package_name}}/lib/names.py{% endraw %}"
NAMES = runpy.run_path(str(NAMES_PY)) if REPO and NAMES_PY.is_file() else None
# The same patterns as the project's (names.py), here also when names.py can't be read.
URI_PASSWORD = NAMES["URI_PASSWORD"] if NAMES else r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:?#]*):[^/@?#]*@"
URI_SECRET_QUERY = NAMES["URI_SECRET_QUERY"] if NAMES else r"(?i)([?&](?:password|token|secret)=)[^&#]*"


def problems(a):
    for field in ("project_name", "author_name"):  # one line each: a heading, a copyright line
        if not a[field].strip() or any(unicodedata.category(c).startswith("C") for c in a[field]):
            yield (field, "must be one non-empty line without control characters (newlines, tabs)")
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", a["project_slug"]):
        yield ("project_slug", "must be lowercase letters, digits and single hyphens, starting with a letter "
               "(e.g. 'shapes-segmentation')")
    elif a["project_slug"] in RESERVED:
        yield ("project_slug", f"'{a['project_slug']}' is a reserved file name on Windows; choose another name")
    pkg = a["package_name"]
    if pkg in RESERVED:
        yield ("package_name", f"'{pkg}' is a reserved file name on Windows; choose another name")
    elif not re.fullmatch(r"[a-z][a-z0-9_]*", pkg) or keyword.iskeyword(pkg):
        yield ("package_name", "must be a lowercase Python identifier, not a keyword (e.g. 'shapes_segmentation')")
    elif pkg in SHADOWED or pkg in sys.stdlib_module_names:
        yield ("package_name", f"'{pkg}' would shadow an installed module; choose another name")
    if a["python_version"] not in LOCKED_PYTHONS:
        yield ("python_version", f"must be one of {', '.join(LOCKED_PYTHONS)}: the floors the template carries a "
               "uv.lock for (a floor covers every newer Python; torch>=2.10 needs 3.10+)")
    if NAMES is not None:
        yield from name_problems(a)
    where = {"mlflow_tracking_uri": "in the environment: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or "
                                    "MLFLOW_TRACKING_TOKEN) for an MLflow server, PGPASSWORD or ~/.pgpass for PostgreSQL",
             "dvc_remote": "after generation with `dvc remote modify --local storage password <it>` (.dvc/config.local, "
                           "which git ignores), or the remote's own environment variables (AWS_SECRET_ACCESS_KEY...)"}
    for field, fix in where.items():
        if re.search(URI_PASSWORD, a[field]) or re.search(URI_SECRET_QUERY, a[field]):
            yield (field, f"carries a password, which would be committed to git; remove it and give it {fix}")
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


def shown(value):  # never print a password back
    return repr(re.sub(URI_SECRET_QUERY, r"\1***", re.sub(URI_PASSWORD, r"\1:***@", value)))


errors = list(problems(ANSWERS))
for field, rule in errors:
    print(f"ERROR: {field}={shown(ANSWERS[field])}: {rule}", file=sys.stderr)
sys.exit(1 if errors else 0)
