"""The environment a run used, as part of its lineage: the sha256 of uv.lock (the exact versions the project
locks), the Python version, the torch build, and what is installed, checked against the lock.

uv.lock is also a dependency of every stage in dvc.yaml, so a change of the locked environment reruns them.

    >>> tags()  # doctest: +SKIP
    {'lock_sha256': '3f1c...', 'python_version': '3.11.7', 'torch_version': '2.14.1', 'torch_build': 'cuda 13.0',
     'lock_matches': 'true'}
"""

import importlib.metadata
import platform
import re
{%- if cookiecutter.python_version != "3.10" %}
import tomllib
{%- endif %}
from pathlib import Path

import torch

from {{ cookiecutter.package_name }}.lib import files
{% if cookiecutter.python_version == "3.10" %}
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, a dependency there
    import tomli as tomllib
{% endif %}
LOCK = "uv.lock"  # relative to the working directory: the repository a stage runs in (also DVC's temp copies)


def normalize(name):
    """Distribution names as the lock writes them (PEP 503): `PyYAML` and `pyyaml` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_sha256(root="."):
    """sha256 of root/uv.lock, or "none" when the project has no lock (a scratch copy, a pip-only checkout)."""
    path = Path(root) / LOCK
    return files.sha256(path) if path.is_file() else "none"


def torch_build():
    """The build of the installed torch, not the machine: "cuda 13.0", "rocm 6.4" or "cpu"."""
    if torch.version.cuda:
        return f"cuda {torch.version.cuda}"
    if getattr(torch.version, "hip", None):
        return f"rocm {torch.version.hip}"
    return "cpu"


def installed_versions():
    """{normalized distribution name: version} of everything importable in this interpreter, sorted."""
    found = {normalize(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
             if d.metadata["Name"]}
    return dict(sorted(found.items()))


def locked_versions(root="."):
    """{name: {versions}} from root/uv.lock: a universal lock can hold several versions of a package, one per
    Python or platform; {} without a lock."""
    path = Path(root) / LOCK
    if not path.is_file():
        return {}
    locked = {}
    for package in tomllib.loads(path.read_text())["package"]:
        if "version" in package:  # the project itself may be dynamic
            locked.setdefault(normalize(package["name"]), set()).add(package["version"])
    return locked


def drift(installed, locked):
    """{name: (installed, locked versions)} for installed packages the lock pins to other versions. A local
    version label is ignored (torch 2.14.1+cpu from the CPU index is the locked 2.14.1 built for CPU)."""
    return {name: (version, sorted(locked[name])) for name, version in installed.items()
            if name in locked and version.split("+")[0] not in locked[name]}


def lock_matches(root="."):
    """"true", "false: <what differs>" (at most 500 characters: it is an MLflow tag) or "no lock"."""
    locked = locked_versions(root)
    if not locked:
        return "no lock"
    differs = drift(installed_versions(), locked)
    if not differs:
        return "true"
    text = "false: " + ", ".join(f"{n} {v} (lock {' / '.join(lv)})" for n, (v, lv) in differs.items())
    return text if len(text) <= 500 else text[:497] + "..."


def tags(root="."):
    """MLflow run tags: which locked environment, Python and torch build the run used."""
    return {"lock_sha256": lock_sha256(root), "python_version": platform.python_version(),
            "torch_version": torch.__version__, "torch_build": torch_build(), "lock_matches": lock_matches(root)}


def summary(root="."):
    """The environment for a report: tags() plus the platform and whether CUDA is usable right now."""
    return {**tags(root), "platform": platform.platform(), "cuda_available": torch.cuda.is_available()}
