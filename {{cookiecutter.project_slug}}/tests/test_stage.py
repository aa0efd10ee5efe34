import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from {{ cookiecutter.package_name }}.lib import stage

ROOT = Path(__file__).parents[1]
STAGES = [*yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"], "compare"]


def test_a_deferred_signal_stops_at_the_next_batch_and_a_second_at_once(monkeypatch):
    monkeypatch.setitem(stage.STOP, "signal", None)
    stage.stop_point()  # no signal yet: nothing happens
    stage.request_stop(signal.SIGTERM, None)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM received"):
        stage.stop_point()
    with pytest.raises(KeyboardInterrupt, match="SIGTERM received"):
        next(stage.checked([1, 2]))
    with pytest.raises(KeyboardInterrupt, match="twice"):
        stage.request_stop(signal.SIGINT, None)


def test_without_a_terminal_a_progress_line_comes_every_interval(capsys):
    ticks = iter([0, 10, 31, 40, 62, 70, 80])  # the clock as the loop starts and after each of 6 items
    done = list(stage.reported("abcdef", "train: epoch 3/12", 6, every=30, clock=lambda: next(ticks)))
    assert done == list("abcdef")
    assert capsys.readouterr().out.splitlines() == [
        "train: epoch 3/12, batch 2/6 (33%) after 31 s, ~62 s to go",
        "train: epoch 3/12, batch 4/6 (66%) after 62 s, ~31 s to go"]  # 30 s from the last line, not the start
    assert stage.progress_line("train: epoch 3/12", 120, 400, 45) == (
        "train: epoch 3/12, batch 120/400 (30%) after 45 s, ~105 s to go")


@pytest.mark.parametrize("error", [ValueError("bad value"), FileNotFoundError("no file"), ConnectionError("down"),
                                   PermissionError("read-only")])
def test_user_errors_end_in_one_line_and_exit_1(error, monkeypatch):
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # keep pytest's own handlers

    def main():
        raise error

    with pytest.raises(SystemExit) as e:
        stage.run("demo", main)
    assert e.value.code == f"demo: {type(error).__name__}: {error}"


def test_a_full_disk_error_without_a_path_says_where_to_look():
    line = stage.explained(OSError(errno.ENOSPC, "No space left on device"))
    assert line.startswith("OSError: [Errno 28] No space left on device; a disk this stage writes to is full")
    assert "models/ or mlruns/" in line and "df -h" in line


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_under_dvc_a_failure_says_how_to_get_the_outputs_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dvc = {"DVC_STAGE": "train", "DVC_ROOT": str(tmp_path)}
    assert stage.recovery("train", env={}) is None  # by hand: outputs are replaced whole, the old ones are there
    assert stage.recovery("train", env=dvc).endswith("`dvc checkout`")  # no git: nothing committed to go back to
    git(tmp_path, "init", "-q")
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "train.json").write_text("{}")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "results")
    line = stage.recovery("train", env=dvc)
    assert line.startswith("train: what to do now: DVC removed this stage's outputs before running it")
    assert line.endswith("`git checkout HEAD -- params.yaml metrics && dvc checkout`")  # only what git holds
    assert "no other stage ran" in stage.recovery("check", env={**dvc, "DVC_STAGE": "check"})
    assert "`git checkout params.yaml && dvc checkout`" in stage.recovery("check", env={**dvc, "DVC_STAGE": "check"})
    temp = stage.recovery("train", env={**dvc, "DVC_ROOT": str(tmp_path / "elsewhere")})
    assert "your workspace is untouched" in temp  # dvc exp run --temp / --queue ran in a copy


def test_under_dvc_the_line_follows_the_error_and_a_bugs_traceback(monkeypatch, capsys):
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    monkeypatch.setenv("DVC_STAGE", "demo")
    monkeypatch.setenv("DVC_ROOT", os.getcwd())

    def bad_input():
        raise ValueError("bad value")

    with pytest.raises(SystemExit) as e:
        stage.run("demo", bad_input)
    first, second = e.value.code.splitlines()
    assert first == "demo: ValueError: bad value" and second.startswith("demo: what to do now: ")

    def bug():
        raise KeyError("a bug")

    with pytest.raises(SystemExit) as e:
        stage.run("demo", bug)
    assert e.value.code.startswith("demo: what to do now: ")
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'a bug'" in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.setattr(signal, "signal", lambda *a: None)

    def main():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        stage.run("demo", main)


@pytest.mark.process
@pytest.mark.parametrize("name", STAGES)
def test_every_stage_refuses_a_bad_params_value_in_one_line(name, tmp_path):
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["seed"] = -1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-m", f"{{ cookiecutter.package_name }}.{name}"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"{name}: ParamsError: params.yaml: seed=-1: must be an integer >= 0"], result.stderr
    assert not [f for f in tmp_path.iterdir() if f.name != "params.yaml"]  # nothing written


def test_another_copy_of_the_package_is_refused(tmp_path, monkeypatch):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    stage.check_own_code(tmp_path / "src" / "pkg", env={})  # this project's own copy: fine
    other = tmp_path / "elsewhere" / "pkg"
    with pytest.raises(stage.ForeignCodeError, match="python imported pkg from .*elsewhere/pkg, not this project's"):
        stage.check_own_code(other, env={})
    # A --temp / queued experiment runs in a copy and may import the main repository's code (DVC_ROOT).
    main = tmp_path / "main"
    (main / "src" / "pkg").mkdir(parents=True)
    stage.check_own_code((main / "src" / "pkg").resolve(), env={"DVC_ROOT": str(main)})
