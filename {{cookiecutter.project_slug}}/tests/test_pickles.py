import pickle

import numpy as np
import pytest
import torch
from torch import nn

from conftest import Evil, zip_of
from {{ cookiecutter.package_name }}.lib import pickles, security


def _nested(data, depth):  # `data` as m.pkl inside `depth` zips
    for _ in range(depth):
        data = zip_of({"m.pkl" if data[:1] == b"\x80" else "inner.zip": data})
    return data


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "uint8"])
def test_raw_weight_blobs_never_trip_the_scan(tmp_path, dtype):
    # A .pt2 stores each weight as raw bytes (data/weights/weight_<n>): a classifier's weight_32 of 1,024 bytes
    # once read as a pickle stream with a dangerous import, and register refused the model.
    rng = np.random.default_rng(0)
    blobs = {}
    for i in range(400):
        scale = [1e-3, 0.05, 1.0, 30.0][i % 4]
        values = rng.standard_normal(int(rng.integers(1, 2048))) * scale
        if dtype.startswith("int") or dtype == "uint8":
            values = rng.integers(0, 256, values.size)
        blobs[f"m/data/weights/weight_{i}"] = values.astype(dtype).tobytes()
        blobs[f"m/data/{i}"] = rng.bytes(int(rng.integers(1, 4096)))  # torch.save storage: any byte at all
    blobs["m/data/weights/weight_hdr"] = b"\x80\x02" + rng.bytes(1022)  # a pickle header by chance
    (tmp_path / "model.pt2").write_bytes(zip_of(blobs))
    assert not [n for n, d in pickles.leaves(tmp_path) if pickles.pickle_like(n, d)]
    (scan,) = security.check_scan(tmp_path)
    assert scan["status"] == "PASS" and "0 pickles" in scan["evidence"], scan["evidence"]


def test_trained_weights_in_a_real_export_pass_and_a_payload_beside_them_fails(tmp_path):
    for seed in range(5):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
        torch.export.save(torch.export.export(net, (torch.rand(2, 3, 4, 4),)), tmp_path / f"m{seed}.pt2")
    (scan,) = security.check_scan(tmp_path)
    assert scan["status"] == "PASS", scan["evidence"]
    # The real payload still fails, wherever it hides: named as a pickle, or unnamed but a pickle stream.
    (tmp_path / "x.pt2").write_bytes(zip_of({"m/data/weights/weight_0": pickle.dumps(Evil())}))
    (scan,) = security.check_scan(tmp_path)
    assert scan["status"] == "FAIL" and scan["severity"] == "critical" and "posix.system" in scan["evidence"]


def test_archives_nested_past_the_limit_block_the_gate(tmp_path):
    # Reaching the limit is a finding register's default gate (block_severity: high) blocks, never a warning.
    (tmp_path / "deep.zip").write_bytes(_nested(pickle.dumps(Evil()), pickles.MAX_ARCHIVE_DEPTH + 1))
    (scan,) = security.check_scan(tmp_path)
    assert scan["status"] == "FAIL" and scan["severity"] in ("high", "critical")
    assert f"deeper than {pickles.MAX_ARCHIVE_DEPTH}" in scan["evidence"]
    (tmp_path / "deep.zip").write_bytes(_nested(pickle.dumps([1, 2]), pickles.MAX_ARCHIVE_DEPTH + 1))  # even harmless
    assert security.check_scan(tmp_path)[0]["status"] == "FAIL"
    (tmp_path / "deep.zip").write_bytes(_nested(pickle.dumps(Evil()), pickles.MAX_ARCHIVE_DEPTH))  # at the limit
    (scan,) = security.check_scan(tmp_path)
    assert scan["status"] == "FAIL" and scan["severity"] == "critical"


def test_what_counts_as_a_pickle():
    assert pickles.pickle_like("a.pt2:m/archive/data.pkl", b"anything")  # torch.save's: unpickled by name
    assert pickles.pickle_like("a.pt2:m/x", pickle.dumps({"a": 1}))  # a whole stream behind a header
    assert not pickles.pickle_like("a.pt2:m/x", pickle.dumps({"a": 1}, protocol=0))  # in an archive: no header
    assert pickles.pickle_like("model", pickle.dumps({"a": 1}, protocol=0))  # a file torch.load would unpickle
    assert not pickles.pickle_like("a.pt2:m/x", b"\x80\x04" + b"\xff" * 30)  # a header, then no stream
    assert pickles.is_text("a.pt2:m/MLmodel") and not pickles.is_text("a.pt2:m/data/0")
