"""The environment a run used, as part of its lineage: the sha256 of uv.lock (the exact versions the project
locks), the Python version, the torch build, and what is installed, checked against the lock.

uv.lock is also a dependency of every stage in dvc.yaml, so a change of the locked environment reruns them, and
every stage stops before work when the installed versions differ from it (check(); ALLOW_LOCK_MISMATCH=1 runs
anyway, and the run says so in its lock_matches tag).

    >>> tags()  # doctest: +SKIP
    {'lock_sha256': '3f1c...', 'python_version': '3.11.7', 'torch_version': '2.14.1', 'torch_build': 'cuda 13.0',
     'lock_matches': 'true'}
"""

import importlib.metadata
import os
import platform
import re
{%- if cookiecutter.python_version != "3.10" %}
import tomllib
{%- endif %}
from pathlib import Path

from {{ cookiecutter.package_name }}.lib import files
{% if cookiecutter.python_version == "3.10" %}
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, a dependency there
    import tomli as tomllib
{% endif %}
LOCK = "uv.lock"  # relative to the working directory: the repository a stage runs in (also DVC's temp copies)
# The switch for those who must run in an environment that differs from the lock (docs/environment.md says why
# it is an environment variable of the machine, not a key of params.yaml).
ALLOW = "ALLOW_LOCK_MISMATCH"
SWITCH = {"1": True, "true": True, "yes": True, "": False, "0": False, "false": False, "no": False}
SHOWN = 3  # packages named in the error line; the rest are counted


class LockMismatchError(ValueError):
    """The installed packages are not the versions uv.lock pins."""


def normalize(name):
    """Distribution names as the lock writes them (PEP 503): `PyYAML` and `pyyaml` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_sha256(root="."):
    """sha256 of root/uv.lock, or "none" when the project has no lock (a scratch copy, a pip-only checkout)."""
    path = Path(root) / LOCK
    return files.sha256(path) if path.is_file() else "none"


def torch_build():
    """The build of the installed torch, not the machine: "cuda 13.0", "rocm 6.4" or "cpu"."""
    import torch  # here, not at the top: the lock check runs in stages that never load torch (check, prepare)

    if torch.version.cuda:
        return f"cuda {torch.version.cuda}"
    if getattr(torch.version, "hip", None):
        return f"rocm {torch.version.hip}"
    return "cpu"


def installed_versions():
    """{normalized distribution name: version} of everything importable in this interpreter, sorted."""
    found = {}
    for d in importlib.metadata.distributions():  # in sys.path order: the first of a name is the one imported
        if d.metadata["Name"]:
            found.setdefault(normalize(d.metadata["Name"]), d.version)
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
    text = "false: " + described(differs, shown=len(differs))
    return text if len(text) <= 500 else text[:497] + "..."


def described(differs, shown=SHOWN):
    """"torch 2.9.0 (lock 2.14.1), numpy 2.0.0 (lock 2.2.6) and 3 more" for drift()'s result."""
    named = [f"{n} {v} (lock {' / '.join(lv)})" for n, (v, lv) in list(differs.items())[:shown]]
    more = len(differs) - shown
    return ", ".join(named) + (f" and {more} more" if more > 0 else "")


def check(root=".", env=os.environ):
    """Stop when the installed packages differ from root/uv.lock, naming them and the fix; with ALLOW_LOCK_MISMATCH=1
    return the differences instead ({} when they match or there is no lock)."""
    value = env.get(ALLOW, "")
    if value.strip().lower() not in SWITCH:
        raise LockMismatchError(f"{ALLOW}={value!r}: must be 1 (run in an environment that differs from {LOCK}) "
                                "or 0 / unset (stop when it differs)")
    locked = locked_versions(root)
    differs = drift(installed_versions(), locked) if locked else {}
    if differs and not SWITCH[value.strip().lower()]:
        raise LockMismatchError(
            f"{LOCK}: {len(differs)} installed package(s) differ from the lock: {described(differs)}; "
            f"`uv sync --frozen` installs the locked versions (CPU-only torch: `make install-cpu`; if {LOCK} itself "
            f"was edited, `git diff {LOCK}` shows how); to run anyway, set {ALLOW}=1 (docs/environment.md)")
    return differs


def tags(root="."):
    """MLflow run tags: which locked environment, Python and torch build the run used."""
    import torch

    return {"lock_sha256": lock_sha256(root), "python_version": platform.python_version(),
            "torch_version": torch.__version__, "torch_build": torch_build(), "lock_matches": lock_matches(root)}


def summary(root="."):
    """The environment for a report: tags() plus the platform and whether CUDA is usable right now."""
    import torch

    return {**tags(root), "platform": platform.platform(), "cuda_available": torch.cuda.is_available()}
