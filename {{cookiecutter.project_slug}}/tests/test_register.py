import math
import re

import mlflow
import numpy as np
import pytest
from torch import nn

from {{ cookiecutter.package_name }} import compare, register
from {{ cookiecutter.package_name }}.lib import report

THRESHOLDS = {"min_quality": 0.8, "max_latency_ms": 50, "min_robustness_score": 0.5, "max_quality_drop": 0.01,
              "max_blocking_findings": 0}
ROBUSTNESS = {"score": 0.7, "security/severity_low": 1, "security/severity_medium": 0, "security/severity_high": 0,
              "security/severity_critical": 0}


def _gates(deploy, opt=None, rob=None, block="high"):
    values = register.gate_values("dice", deploy, opt or {"deployable/dice_change": -0.002}, rob or ROBUSTNESS, block)
    return {g["gate"]: g for g in register.evaluate_gates(values, THRESHOLDS)}


def test_gates_pass_and_fail_on_the_right_side_of_each_threshold():
    gates = _gates({"dice": 0.9, "p50_ms_batch_1": 12.0})
    assert all(g["passed"] for g in gates.values())
    assert gates["max_quality_drop"]["value"] == pytest.approx(0.002)
    assert gates["max_blocking_findings"]["value"] == 0  # the low finding is below "high"
    failed = _gates({"dice": 0.79, "p50_ms_batch_1": 50.5}, {"deployable/dice_change": -0.02},
                    {**ROBUSTNESS, "score": 0.49, "security/severity_critical": 1})
    assert not any(g["passed"] for g in failed.values())
    edge = _gates({"dice": 0.8, "p50_ms_batch_1": 50.0})  # thresholds themselves pass
    assert edge["min_quality"]["passed"] and edge["max_latency_ms"]["passed"]
    assert _gates({"dice": 0.9, "p50_ms_batch_1": 1.0}, block="low")["max_blocking_findings"]["value"] == 1
    assert "max_blocking_findings" not in _gates({"dice": 0.9, "p50_ms_batch_1": 1.0}, block=None)


def test_an_unreliable_latency_neither_passes_nor_fails_its_gate():
    values = {"max_latency_ms": 5.0, "min_quality": 0.9}
    gates = register.evaluate_gates(values, {"max_latency_ms": 50, "min_quality": 0.8},
                                    {"max_latency_ms": "p90/p50 3.10 > 1.5"})
    latency, quality = gates
    assert latency["passed"] is False and latency["verdict"] == "unreliable: p90/p50 3.10 > 1.5"
    assert quality["passed"] and quality["verdict"] == "pass"
    assert register.decision_metrics(False, gates, {"registered": False})["gates_unreliable"] == 1


def test_promotion_policy():
    assert register.should_promote("if_better", 0.9, None)  # no champion yet
    assert register.should_promote("if_better", 0.9, 0.8)
    assert not register.should_promote("if_better", 0.8, 0.8)  # a tie keeps the champion
    assert not register.should_promote("if_better", 0.9, math.nan)  # champion without a recorded quality
    assert register.should_promote("always", 0.1, 0.9)
    assert not register.should_promote("never", 0.9, None)


def test_registry_versions_aliases_and_audit_tags(project):
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    client = mlflow.MlflowClient()
    example = np.zeros((2, 3, 4, 4), dtype=np.float32)
    logged = []

    def log_model():
        logged.append(1)
        return mlflow.pytorch.log_model(nn.Conv2d(3, 1, 1), name="deployable", input_example=example,
                                        pip_requirements=["torch"]).model_uri

    def reg(run_id, sha, quality, policy="if_better"):
        tags = {"artifact_sha256": sha, "quality": repr(quality)}
        return register.register(client, "m", run_id, sha, tags, log_model, policy, quality)

    with mlflow.start_run() as a:
        first = reg(a.info.run_id, "aa", 0.80)
        again = reg(a.info.run_id, "aa", 0.80)  # the same run and file: no new version
    assert first["version"] == again["version"] == 1 and first["created"] and not again["created"]
    assert len(logged) == 1 and first["promoted"] and first["champion_version"] == 1
    with mlflow.start_run() as b:
        worse = reg(b.info.run_id, "bb", 0.70)
    assert worse["version"] == 2 and not worse["promoted"] and worse["champion_version"] == 1
    with mlflow.start_run() as c:
        better = reg(c.info.run_id, "cc", 0.85)
    assert better["promoted"] and better["champion_version"] == 3 and better["previous_champion"] == 1
    v3 = client.get_model_version("m", "3")
    assert v3.tags["previous_champion"] == "1" and v3.tags["promoted_over"] == "1" and "promoted_at" in v3.tags
    assert set(v3.aliases) == {"champion", "challenger"}
    assert client.get_model_version_by_alias("m", "champion").run_id == c.info.run_id
    with mlflow.start_run() as d:
        assert not reg(d.info.run_id, "dd", 0.99, policy="never")["promoted"]
    assert client.get_model_version_by_alias("m", "challenger").version == 4
    assert client.get_model_version_by_alias("m", "champion").version == 3


def test_report_page_is_self_contained(tmp_path):
    png = tmp_path / "p.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    page = report.page("T <x>", report.rows_table([{"a": 0.5, "b": "<b>"}]) + report.image(png, "plot"))
    assert "T &lt;x&gt;" in page and "&lt;b&gt;" in page and "<td>0.5000</td>" in page
    assert re.search(r'src="data:image/png;base64,iVBORw0KGgo', page)  # inlined, no link to a file
    assert "not found" in report.image(tmp_path / "missing.png", "x")


def test_compare_tabulates_runs_from_what_the_stages_logged(project, task):
    metric = "dice" if task == "segmentation" else "accuracy"
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    experiment = mlflow.create_experiment(compare.params.load()["mlflow"]["experiment"])
    for i, arch in enumerate(["a1", "a2"]):
        with mlflow.start_run(experiment_id=experiment, run_name=f"run{i}",
                              tags={"task": task, "architecture": arch, "registry_version": str(i + 1)}):
            mlflow.log_metrics({f"test/{metric}": 0.5 + i / 10, "params/total": 1000 * (i + 1),
                                "analyze/latency/batch_1/p50_ms": 2.0 + i, "robustness/score": 0.25})
    compare.main(["--out", "reports/compare"])
    table = (project / "reports/compare.md").read_text()
    assert f"test {metric}" in table.splitlines()[0]
    assert "| run1 |" in table and "| a2 |" in table and "0.6 |" in table and "| 2000 |" in table
    assert (project / "reports/compare.png").stat().st_size > 0
    assert "data:image/png;base64," in (project / "reports/compare.html").read_text()
    with pytest.raises(SystemExit):
        compare.main(["--max-runs", "0"])
