"""A stage that fails under DVC, which deletes a stage's outputs before running it: a bad params value stops in
`check` with every output in place, a later failure says how to get the outputs back, and the commands it gives
do, on a baked project with git and DVC (its first three stages only: five stage processes in all)."""

import re

import pytest
import yaml

from conftest import TINY, bake, sh

OUTPUTS = ("models/model.safetensors", "metrics/train.json", "metrics/mlflow.json", "plots/train/history.json",
           "plots/train/curves.png", "plots/train/predictions.png", "metrics/prepare.json", "reports/check.txt")


def contents(project):
    return {path: (project / path).read_bytes() if (project / path).exists() else None for path in OUTPUTS}


@pytest.mark.pipeline
def test_a_failed_stage_under_dvc_loses_nothing_for_good(tmp_path):
    project = bake(tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section in ("prepare", "train"):
        params[section].update(TINY[section])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    pipeline = {"stages": {name: pipeline["stages"][name] for name in ("check", "prepare", "train")}}
    (project / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    sh(project, "git", "commit", "-qam", "tiny params, three stages")
    out = sh(project, "dvc", "repro")
    assert [line for line in out.splitlines() if line.startswith("Running stage")] == [
        f"Running stage '{stage}':" for stage in ("check", "prepare", "train")]
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "results")
    good = contents(project)
    assert all(good.values())

    # A bad value, as `dvc exp run -S` sets it: check stops it before DVC touches train's outputs.
    out = sh(project, "dvc", "exp", "run", "-S", "train.epochs=abc", ok=False)
    assert "check: ParamsError: params.yaml: train.epochs='abc': must be an integer >= 1" in out
    assert "check: what to do now: " in out and "`git checkout params.yaml && dvc checkout`" in out
    assert "Running stage 'train'" not in out and "Traceback" not in out
    assert {p: b for p, b in contents(project).items() if p != "reports/check.txt"} == {
        p: b for p, b in good.items() if p != "reports/check.txt"}  # the last good model, metrics and plots
    assert sh(project, "git", "status", "--porcelain").split() == ["M", "params.yaml"]
    sh(project, "git", "checkout", "params.yaml")
    sh(project, "dvc", "checkout")
    assert contents(project) == good and "up to date" in sh(project, "dvc", "status")

    # A value check accepts but train cannot use: DVC has deleted train's outputs when train fails. Only the
    # stages whose params changed ran (check, train), not prepare.
    out = sh(project, "dvc", "exp", "run", "-S", "train.device=cuda:7", ok=False)
    assert "Running stage 'train'" in out and "Running stage 'prepare'" not in out
    assert "train.device='cuda:7'" in out and "Traceback" not in out
    assert contents(project)["models/model.safetensors"] is None and contents(project)["metrics/train.json"] is None
    line = next(line for line in out.splitlines() if line.startswith("train: what to do now: "))
    command = re.search(r"get back the last commit's params and outputs: `([^`]+)`$", line)[1]
    assert command == "git checkout HEAD -- params.yaml dvc.lock metrics plots reports && dvc checkout"
    sh(project, "bash", "-c", command)
    assert contents(project) == good
    assert "Running stage" not in sh(project, "dvc", "repro")  # nothing left to redo
    assert sh(project, "git", "status", "--porcelain") == ""
