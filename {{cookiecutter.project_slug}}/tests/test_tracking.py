import subprocess
from pathlib import Path

from {{ cookiecutter.package_name }}.lib import tracking


def test_run_name():
    assert tracking.run_name("Unet", "resnet18", False, now=0).startswith("unet_resnet18_random_19")
    assert tracking.run_name("resnet18", None, True, now=0).startswith("resnet18_pretrained_")


def test_context_tags_record_a_dirty_workspace_and_a_plain_repro(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.context_tags(env={})["git_commit"] == "none"  # not a repository
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    for name in ("train.py", "dvc.lock"):
        Path(name).write_text("a")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    clean = tracking.context_tags(env={})
    assert clean["git_dirty"] == "false" and clean["dvc_exp_name"] == tracking.NOT_AN_EXPERIMENT
    Path("dvc.lock").write_text("rewritten by the pipeline")  # not a change of the user's
    assert tracking.context_tags(env={})["git_dirty"] == "false"
    Path("train.py").write_text("changed")
    dirty = tracking.context_tags(env={"DVC_EXP_NAME": "exp-1"})
    assert dirty["git_dirty"] == "true" and dirty["git_dirty_files"] == "train.py"
    assert dirty["dvc_exp_name"] == "exp-1"


# --- credentials, and stores checked before work ----------------------------------------------------------------
