import io
import pickle
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from packaging.version import Version
from torch import nn

from conftest import Evil, zip_of
from {{ cookiecutter.package_name }}.lib import models, names, security

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


def _tiny_classifier():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    return models.Normalized(net, [0.5] * 3, [0.25] * 3).eval()


def _onnx(path):  # a one-node ONNX graph, valid for onnx.checker
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph), str(path))


def _pyproject(path, *deps):
    path.write_text("[project]\nname = 'x'\ndependencies = [" + ", ".join(f"{d!r}" for d in deps) + "]\n")
    return path


# --- model files --------------------------------------------------------------------------------------------

def test_scan_fails_a_planted_malicious_pickle(tmp_path):
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Evil()))
    torch.save({"weights": torch.zeros(2), "payload": Evil()}, tmp_path / "evil.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "clean.pt")
    (result,) = security.check_scan(tmp_path)
    assert result["status"] == "FAIL" and result["severity"] == "critical"
    assert "evil.pkl" in result["evidence"] and "evil.pt" in result["evidence"] and "posix.system" in result["evidence"]
    assert "clean.pt" not in result["evidence"]
    (fmt,) = security.check_formats([tmp_path / "evil.pt"], None)
    assert fmt["status"] == "FAIL"  # torch.load(weights_only=True) refuses it


def test_scan_opens_archives_inside_archives(tmp_path):
    # picklescan's own scan opens one level of zip: a torch.save zip inside a zip (as in a .pt2) goes unseen.
    from picklescan.scanner import scan_file_path

    inner = io.BytesIO()
    torch.save({"payload": Evil()}, inner)
    (tmp_path / "model.pt2").write_bytes(zip_of({"m/data/sample_inputs/model.pt": inner.getvalue()}))
    assert scan_file_path(str(tmp_path / "model.pt2")).scanned_files == 0
    (result,) = security.check_scan(tmp_path)
    assert result["status"] == "FAIL" and "model.pt2:m/data/sample_inputs/model.pt:" in result["evidence"]
    assert "posix.system" in result["evidence"]


def test_scan_of_nothing_is_never_a_pass(tmp_path):
    (result,) = security.check_scan(tmp_path)
    assert result["status"] == "WARN" and "nothing to scan" in result["evidence"]
    (result,) = security.check_scan(tmp_path / "missing")
    assert result["status"] == "WARN"


def test_a_folder_of_text_only_is_a_warning_not_a_pass(tmp_path):
    (tmp_path / "MLmodel").write_text("artifact_path: model\nflavors:\n")
    (tmp_path / "conda.yaml").write_text("channels:\n- conda-forge\n")
    (result,) = security.check_scan(tmp_path)
    assert result["status"] == "WARN" and "(2 of them text); nothing to scan" in result["evidence"]


def test_the_model_logged_to_mlflow_is_scanned_archives_included(tmp_path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("scan", artifact_location=(tmp_path / "mlruns").as_uri())
    example = torch.rand(2, 3, 8, 8).numpy()
    with mlflow.start_run(experiment_id=experiment):  # as train logs it: pt2, a torch.export zip
        uri = mlflow.pytorch.log_model(_tiny_classifier(), name="model", input_example=example,
                                       pip_requirements=["torch"]).model_uri
    (scan,) = security.check_logged_scan(uri)
    # The pickles inside the .pt2's zip (torch.save'd sample inputs) were seen and found harmless.
    assert scan["status"] == "PASS" and "model.pt2:" in scan["evidence"] and "data.pkl" in scan["evidence"]
    local = Path(mlflow.get_logged_model(uri.split("/")[-1]).artifact_location.removeprefix("file://"))
    (local / "evil.pkl").write_bytes(pickle.dumps(Evil()))
    (scan,) = security.check_logged_scan(uri)
    assert scan["status"] == "FAIL" and f"{uri}/evil.pkl" in scan["evidence"] and str(tmp_path) not in scan["evidence"]


def test_safe_formats_pass(tmp_path):
    models.save_checkpoint(tmp_path / "m.safetensors", _tiny_classifier(), {"x": 1})
    _onnx(tmp_path / "m.onnx")
    results = security.check_formats([tmp_path / "m.safetensors", tmp_path / "m.onnx"], None)
    assert [r["status"] for r in results] == ["PASS", "PASS"]
    (scan,) = security.check_scan(tmp_path)
    assert scan["status"] == "PASS" and "2 files (2 entries" in scan["evidence"] and "0 pickles" in scan["evidence"]


def test_a_pickle_renamed_safetensors_is_caught(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(pickle.dumps(Evil()))
    assert not security.is_safetensors(tmp_path / "m.safetensors")
    assert security.check_formats([tmp_path / "m.safetensors"], None)[0]["status"] == "FAIL"
    assert security.check_scan(tmp_path)[0]["status"] == "FAIL"


def test_torch_export_archive(tmp_path):
    model = _tiny_classifier()
    torch.export.save(torch.export.export(model, (torch.rand(2, 3, 8, 8),)), tmp_path / "m.pt2")
    (scan,) = security.check_scan(tmp_path)
    assert scan["status"] == "PASS" and "1 files (" in scan["evidence"]  # every member seen, none runs code
    assert "1 files (1 entries" not in scan["evidence"]  # the archive was opened
    (fmt,) = security.check_formats([tmp_path / "m.pt2"], None)
    assert fmt["status"] in ("PASS", "WARN") and "torch.export archive" in fmt["evidence"]
    if fmt["status"] == "WARN":  # this torch pickles something inside (the sample inputs)
        assert ".pt2:" in fmt["evidence"]


# --- versions -----------------------------------------------------------------------------------------------

def test_floors_come_from_the_projects_pyproject():
    assert set(security.floors(PYPROJECT)) == set(security.ADVISORIES)
    assert security.floors(PYPROJECT)["torch"] >= Version("2.10")  # CVE-2026-24747 is fixed in 2.10


@pytest.mark.parametrize("torch_version,status", [
    ("2.5.1+cpu", "FAIL"),     # CVE-2025-32434
    ("2.9.1", "FAIL"),         # CVE-2026-24747
    ("2.10.0a0", "FAIL"),      # a pre-release of the floor is older than the floor (PEP 440)
    ("2.10.0.dev20251201", "FAIL"),
    ("2.10.0", "PASS"),
    ("2.14.1+cu128", "PASS"),  # a local build label does not matter
    ("2.11.0rc1", "PASS"),     # a pre-release above the floor
])
def test_version_floors(tmp_path, torch_version, status):
    pyproject = _pyproject(tmp_path / "pyproject.toml", "torch>=2.10", "mlflow>=3.11",
                           "tomli>=2; python_version < '3.11'")
    torch_row, mlflow_row = security.check_versions(pyproject, {"torch": torch_version, "mlflow": "3.17.2"})
    assert torch_row["status"] == status and mlflow_row["status"] == "PASS"
    if status == "FAIL":
        assert "CVE-2025-32434" in torch_row["evidence"] and "torch>=2.10" in torch_row["mitigation"]


def test_floor_changes_follow_pyproject(tmp_path):
    pyproject = _pyproject(tmp_path / "pyproject.toml", "torch>=2.20", "mlflow~=3.11")
    torch_row, mlflow_row = security.check_versions(pyproject, {"torch": "2.14.1", "mlflow": "3.11.0"})
    assert torch_row["status"] == "FAIL" and "< 2.20" in torch_row["evidence"]
    assert mlflow_row["status"] == "PASS"


def test_missing_pyproject_or_floor_is_a_warning(tmp_path):
    (row,) = security.check_versions(tmp_path / "pyproject.toml", {"torch": "2.14.1", "mlflow": "3.17.2"})
    assert row["status"] == "WARN" and str(tmp_path / "pyproject.toml") in row["evidence"]
    pyproject = _pyproject(tmp_path / "pyproject.toml", "torch", "mlflow>=3.11")
    torch_row, mlflow_row = security.check_versions(pyproject, {"torch": "2.14.1", "mlflow": "3.17.2"})
    assert torch_row["status"] == "WARN" and "no floor for torch" in torch_row["evidence"]
    assert mlflow_row["status"] == "PASS"


def test_installed_versions_are_checked_by_default():
    assert {r["status"] for r in security.check_versions(PYPROJECT)} == {"PASS"}


# --- configuration ------------------------------------------------------------------------------------------

def test_tracking_configuration():
    assert security.check_tracking("http://10.1.2.3:5000", env={})[0]["status"] == "WARN"
    assert security.check_tracking("http://10.1.2.3:5000", env={"MLFLOW_TRACKING_USERNAME": "u"})[0][
        "status"] == "PASS"
    assert security.check_tracking("http://127.0.0.1:5000", env={})[0]["status"] == "PASS"
    assert security.check_tracking("https://mlflow.example.org", env={})[0]["status"] == "PASS"
    assert security.check_tracking("sqlite:////repo/mlflow.db", env={})[0]["status"] == "PASS"


@pytest.mark.parametrize("values,status", [
    ({"params.lr": 0.001, "tag.task": "segmentation", "params.mlflow.password": None}, "PASS"),
    ({"params.mlflow.api_token": "abc123"}, "FAIL"),
    ({"params.mlflow.tracking_uri": "http://user:hunter2@host:5000"}, "FAIL"),
    ({"tag.note": "AKIAABCDEFGHIJKLMNOP"}, "FAIL"),
    ({"tag.key": "-----BEGIN RSA PRIVATE KEY-----"}, "FAIL"),
])
def test_secret_patterns(values, status):
    assert security.check_secrets(values)[0]["status"] == status


def test_input_validation_is_real():
    assert security.check_input_validation([3, 8, 8])[0]["status"] == "PASS"
    with pytest.raises(ValueError, match="NaN"):
        models.validate_input(torch.full((1, 3, 8, 8), float("nan")), [3, 8, 8])


# --- audit --------------------------------------------------------------------------------------------------

def test_audit_runs_every_check_and_counts(tmp_path):
    models.save_checkpoint(tmp_path / "m.safetensors", _tiny_classifier(), {"x": 1})
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Evil()))
    pyproject = _pyproject(tmp_path / "pyproject.toml", "torch>=2.10", "mlflow>=3.11")
    findings, summary = security.audit([tmp_path / "m.safetensors"], tmp_path, None, "http://10.1.2.3:5000",
                                       {"params.lr": 0.1}, [3, 8, 8], pyproject=pyproject)
    assert [f["check"] for f in findings] == ["no-pickle-format", "pickle-scan", "cve-floor", "cve-floor",
                                              "tracking-config", "secrets", "input-validation"]
    assert summary["pass"] + summary["warn"] + summary["fail"] == len(findings)
    assert (summary["fail"], summary["warn"]) == (1, 1)  # the planted pickle; plain HTTP to a remote host
    assert summary == security.summarize(findings)
    assert {k: summary[f"severity_{k}"] for k in names.SEVERITIES} == {"low": 0, "medium": 1, "high": 0,
                                                                         "critical": 1}
