import errno
import json
import math
import shutil

import pytest
import yaml

from {{ cookiecutter.package_name }}.lib import files


def test_outputs_appear_whole_or_not_at_all(tmp_path):
    with pytest.raises(RuntimeError), files.atomic_path(tmp_path / "out.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_metrics_file_never_holds_nan_or_inf(tmp_path, value):
    with pytest.raises(ValueError, match=r"m.json: not written, non-finite values \['val/dice'\]"):
        files.write_json(tmp_path / "m.json", {"val/dice": value, "epochs": 3})
    assert list(tmp_path.iterdir()) == []
    files.write_json(tmp_path / "m.json", {"val/dice": 0.5})
    assert json.loads((tmp_path / "m.json").read_text()) == {"val/dice": 0.5}


@pytest.fixture
def stage_dir(tmp_path, monkeypatch):
    """A working directory with a dvc.yaml of one stage writing a file, a folder and a metrics file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "a.bin").write_bytes(b"x" * 1000)
    stages = {"s": {"cmd": "x", "deps": ["inputs/a.bin"], "outs": ["out/model.bin", "out/folder"],
                    "metrics": [{"metrics/s.json": {"cache": False}}]}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    return tmp_path


def test_preflight_removes_the_debris_of_an_interrupted_write(stage_dir):
    # What atomic_path leaves when its process dies before its `finally` (SIGKILL, power loss).
    (stage_dir / "out").mkdir()
    debris = [stage_dir / "out" / ".model.bin.k3j2", stage_dir / "out" / ".folder.abc" / "inner"]
    for d in debris:
        d.mkdir(parents=True)
    (stage_dir / "out" / ".unrelated").write_text("kept")
    files.preflight(files.stage_spec("s"))
    assert sorted(p.name for p in (stage_dir / "out").iterdir()) == [".unrelated"]


@pytest.mark.parametrize("plant,message", [
    ("out/model.bin/", "out/model.bin: must be a file but is a folder"),
    ("out/folder", "out/folder: must be a folder but is a file"),
    ("metrics", "metrics: a file where a folder is needed"),
])
def test_preflight_names_an_output_of_the_wrong_kind(stage_dir, plant, message):
    path = stage_dir / plant
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir() if plant.endswith("/") else path.write_text("")
    with pytest.raises(OSError, match=message):
        files.preflight(files.stage_spec("s"))


def test_preflight_names_a_read_only_location(stage_dir, monkeypatch):
    # A read-only mount (root ignores permission bits, so the refusal itself is simulated).
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(files.tempfile, "TemporaryFile", refuse)
    with pytest.raises(PermissionError, match="not writable .Read-only file system."):
        files.preflight(files.stage_spec("s"))


def test_space_is_estimated_from_what_the_outputs_take(stage_dir):
    (stage_dir / "out").mkdir()
    (stage_dir / "out" / "model.bin").write_bytes(b"x" * 3 * 2**20)
    outputs = files.stage_outputs(files.stage_spec("s"))
    files.check_space(outputs, [], free=lambda folder: 7 * 2**20)  # old copy + new copy fit
    with pytest.raises(OSError, match=r": 5 MiB free, the stage needs about 6 MiB; free some space"):
        files.check_space(outputs, [], free=lambda folder: 5 * 2**20)


def test_room_for_what_a_stage_writes_late_is_checked_before_work(tmp_path, monkeypatch):
    # A full disk under models/ or mlruns/ found before the first epoch, not after the last.
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda folder: usage._replace(free=30 * 2**20))
    needs = {tmp_path / "models": (10 * 2**20, "the checkpoint"),
             tmp_path / "mlruns" / "1" / "abc" / "artifacts": (20 * 2**20, "the checkpoint and the logged model")}
    files.check_room({tmp_path / "models": needs[tmp_path / "models"]}, "train")  # 10 MiB x 1.25 + 8 MiB fits
    # Folders on one disk add up: 30 MiB x 1.25 + 8 MiB = 45.5 MiB.
    with pytest.raises(OSError, match=rf"{tmp_path}: {30 * 2**20} bytes free \(30 MiB\), train needs about "
                                      rf"{int(30 * 2**20 * 1.25) + 8 * 2**20} bytes \(46 MiB: the checkpoint in "):
        files.check_room(needs, "train")


class SafetensorError(Exception):
    """As safetensors raises it: no errno, no path, the OS's words inside."""


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left '
                    'on device" })'),
])
def test_a_full_disk_while_writing_keeps_the_old_file_and_names_the_path(tmp_path, error):
    target = tmp_path / "models" / "model.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"the last good model")
    with pytest.raises(OSError, match=r"model.safetensors: not written, its disk is full \(\d+ MiB free in ") as e, \
            files.atomic_path(target) as tmp:
        tmp.write_bytes(b"half a mod")
        raise error
    assert e.value.errno == errno.ENOSPC and "any previous model.safetensors is untouched" in str(e.value)
    assert target.read_bytes() == b"the last good model"
    assert [p.name for p in target.parent.iterdir()] == ["model.safetensors"]  # no temporary copy left
