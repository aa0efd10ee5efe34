import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from {{ cookiecutter.package_name }} import check
from {{ cookiecutter.package_name }}.lib import params, paths

ROOT = Path(__file__).parents[1]


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """tmp_path as the working directory, with the shipped params.yaml (no dvc.yaml, no uv.lock: a scratch copy)."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def edit(path, key, value):
    p = yaml.safe_load(path.read_text())
    *parents, last = key.split(".")
    node = p
    for k in parents:
        node = node[k]
    node[last] = value
    path.write_text(yaml.safe_dump(p))


def test_its_output_is_the_same_whatever_the_params(scratch):
    # DVC compares the stages' deps by hash: an output that followed params would rerun every stage after check.
    check.main()
    first = paths.CHECKED.read_bytes()
    edit(scratch / "params.yaml", "lr", 0.123)
    edit(scratch / "params.yaml", "prepare.image_size", 96)
    check.main()
    assert paths.CHECKED.read_bytes() == first


@pytest.mark.parametrize("key,value,message", [
    ("train.epochs", "abc", "train.epochs='abc': must be an integer >= 1"),  # dvc exp run -S train.epochs=abc
    ("train.epoch", 3, "train.epoch: unknown key; did you mean train.epochs?"),  # -S +train.epoch=3 (DVC's hint)
])
def test_a_bad_value_anywhere_stops_it_and_leaves_the_output(scratch, key, value, message):
    check.main()
    before = paths.CHECKED.stat().st_mtime_ns
    edit(scratch / "params.yaml", key, value)
    with pytest.raises(params.ParamsError, match=message):
        check.main()
    assert paths.CHECKED.stat().st_mtime_ns == before


@pytest.mark.process
def test_it_loads_no_torch(scratch):
    # What makes it cheap enough to run before every params change.
    code = f"import sys; from {check.__name__} import main; main(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=scratch, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "False"
