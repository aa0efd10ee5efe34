import hashlib
import json
import re
import shutil
from pathlib import Path

import mlflow
import pytest
import torch

from {{ cookiecutter.package_name }} import train
from {{ cookiecutter.package_name }}.lib import card, environment

LOCK = Path(__file__).parents[1] / "uv.lock"


def test_lock_sha256_is_the_files_digest_and_none_without_a_lock(tmp_path):
    assert environment.lock_sha256(tmp_path) == "none" and environment.locked_versions(tmp_path) == {}
    assert environment.lock_matches(tmp_path) == "no lock"
    shutil.copy(LOCK, tmp_path / "uv.lock")
    assert environment.lock_sha256(tmp_path) == hashlib.sha256(LOCK.read_bytes()).hexdigest()


def test_torch_build_names_the_installed_build():
    build = environment.torch_build()
    assert re.fullmatch(r"cuda \d+\.\d+|rocm \S+|cpu", build)
    assert (build == "cpu") == (torch.version.cuda is None and getattr(torch.version, "hip", None) is None)


def test_installed_versions_are_normalized_names():
    installed = environment.installed_versions()
    assert installed["torch"] == torch.__version__.split("+")[0]  # the build label (+cu130) is torch's own
    assert "pyyaml" in installed and all(name == environment.normalize(name) for name in installed)


def test_the_lock_pins_this_projects_dependencies():
    locked = environment.locked_versions(LOCK.parent)
    assert {"torch", "mlflow", "dvc", "numpy", "pytest", "ruff"} <= set(locked)
{%- if cookiecutter.task == "segmentation" %}
    assert "segmentation-models-pytorch" in locked
{%- else %}
    assert "segmentation-models-pytorch" not in locked  # a classifier needs no smp (nor timm)
    assert "timm" not in locked
{%- endif %}


def test_drift_names_a_changed_version_and_ignores_local_labels():
    locked = {"torch": {"2.14.1"}, "numpy": {"2.2.6", "2.4.6"}}
    assert environment.drift({"torch": "2.14.1+cpu", "numpy": "2.2.6", "extra": "1.0"}, locked) == {}
    assert environment.drift({"torch": "2.14.0", "numpy": "2.4.6"}, locked) == {"torch": ("2.14.0", ["2.14.1"])}


def test_a_lock_the_environment_does_not_match_is_reported(tmp_path):
    text = LOCK.read_text()
    version = environment.installed_versions()["torch"]
    tampered = text.replace(f'name = "torch"\nversion = "{version}"', 'name = "torch"\nversion = "0.0.1"')
    assert tampered != text
    (tmp_path / "uv.lock").write_text(tampered)
    installed = environment.installed_versions()["torch"]
    assert environment.lock_matches(tmp_path).startswith(f"false: torch {installed} (lock 0.0.1)")


def tampered_lock(tmp_path, names=("torch",)):
    """uv.lock with these packages moved to version 0.0.1."""
    text = LOCK.read_text()
    for name in names:
        version = environment.installed_versions()[name].split("+")[0]  # a CPU wheel's +cpu is not in the lock
        text = text.replace(f'name = "{name}"\nversion = "{version}"', f'name = "{name}"\nversion = "0.0.1"')
    (tmp_path / "uv.lock").write_text(text)


def test_an_environment_the_lock_does_not_pin_stops_the_stage_with_the_fix(tmp_path):
    names = ("torch", "numpy", "pyyaml", "mlflow", "dvc")
    tampered_lock(tmp_path, names)
    with pytest.raises(environment.LockMismatchError) as e:
        environment.check(tmp_path, env={})
    message = str(e.value)
    assert message.startswith("uv.lock: 5 installed package(s) differ from the lock: ")
    assert message.count("(lock ") == 3 and "and 2 more" in message  # a few names, then a count
    assert "`uv sync --frozen`" in message and "ALLOW_LOCK_MISMATCH=1" in message
    with pytest.raises(environment.LockMismatchError):
        environment.check(tmp_path, env={"ALLOW_LOCK_MISMATCH": "0"})


def test_the_switch_runs_anyway_and_a_misspelt_value_is_refused(tmp_path):
    tampered_lock(tmp_path)
    differs = environment.check(tmp_path, env={"ALLOW_LOCK_MISMATCH": "1"})
    assert list(differs) == ["torch"] and differs["torch"][1] == ["0.0.1"]
    with pytest.raises(environment.LockMismatchError, match="ALLOW_LOCK_MISMATCH='maybe': must be 1"):
        environment.check(tmp_path, env={"ALLOW_LOCK_MISMATCH": "maybe"})
    assert environment.check(tmp_path / "no-lock", env={}) == {}  # a scratch copy without uv.lock: nothing to check


def test_train_records_the_environment_in_its_run(project, runs):
    shutil.copy(LOCK, project / "uv.lock")
    train.main()
    (run,) = runs(project)
    tags = run.data.tags
    assert tags["lock_sha256"] == hashlib.sha256(LOCK.read_bytes()).hexdigest()
    assert tags["torch_version"] == torch.__version__ and tags["torch_build"] == environment.torch_build()
    assert tags["python_version"].startswith("3.") and re.match(r"true|false: ", tags["lock_matches"])
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                               artifact_path="environment/installed_versions.json")
    assert json.loads(Path(path).read_text())["torch"] == environment.installed_versions()["torch"]


def test_model_report_shows_the_environment(tmp_path, monkeypatch):
    shutil.copy(LOCK, tmp_path / "uv.lock")
    monkeypatch.chdir(tmp_path)
    robustness = {"summary": {"metric": "dice", "score": 0.5, "level": "medium"}, "security": []}
    explained = {"layer": "layer2", "max_rank_correlation": 0.5, "test_images": [], "rows": []}
    page = card.page("T", [], None, [], [], {}, {}, {"explain/flagged": 0, "explain/images": 0},
                     explained, {"deployable": "fp32", "variants": {}}, robustness)
    assert "Environment" in page and environment.lock_sha256() in page and environment.torch_build() in page
