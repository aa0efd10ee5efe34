import pytest

from {{ cookiecutter.package_name }} import pr_report


def test_changed_rows_name_old_new_and_change_and_mask_passwords():
    values = {("params.yaml", "lr"): (0.001, 0.003), ("params.yaml", "seed"): (42, 42),
              ("params.yaml", "mlflow.tracking_uri"): ("http://a:s3cret@h:5000", "http://a:other@h:5000"),
              ("metrics/train.json", "epochs_run"): (None, 2), ("metrics/mlflow.json", "run_id"): ("a", "b")}
    rows = pr_report.changed_rows(values, skip={"metrics/mlflow.json"})
    assert [r["key"] for r in rows] == ["epochs_run", "lr", "mlflow.tracking_uri"]  # unchanged seed left out
    assert rows[0] == {"file": "metrics/train.json", "key": "epochs_run", "old": "—", "new": "2", "change": ""}
    assert rows[1]["old"] == "0.001" and rows[1]["new"] == "0.003" and rows[1]["change"] == "+0.002 (+200.0%)"
    assert "s3cret" not in str(rows) and "other" not in str(rows)


@pytest.mark.parametrize("old,new,expected", [(2, 3, "+1 (+50.0%)"), (0, 1, "+1"), (0.5, 0.25, "-0.25 (-50.0%)"),
                                               ("a", "b", ""), (None, 1, ""), (True, False, "")])
def test_change(old, new, expected):
    assert pr_report.change(old, new) == expected


def test_gate_rows_give_each_sides_verdict():
    f = "metrics/register.json"
    metrics = {(f, "passed"): (0, 1), (f, "gate/min_quality/passed"): (0, 1),
               (f, "gate/max_latency_ms/passed"): (None, 1), ("metrics/train.json", "gate/x/passed"): (1, 1)}
    assert pr_report.gate_rows(metrics) == [{"gate": "all gates", "base": "FAIL", "branch": "pass"},
                                            {"gate": "max_latency_ms", "base": "—", "branch": "pass"},
                                            {"gate": "min_quality", "base": "FAIL", "branch": "pass"}]
    assert pr_report.gate_rows({}) == [{"gate": "all gates", "base": "—", "branch": "—"}]


def test_run_link_points_into_the_server_ui_without_credentials():
    run = {"run_id": "abc", "experiment_id": "7"}
    assert pr_report.run_link(run, "https://me:s3cret@mlflow.example.org:8443/base/?token=x") == (
        "[abc](https://mlflow.example.org:8443/base/#/experiments/7/runs/abc)")
    assert pr_report.run_link(run, "sqlite:////repo/mlflow.db") == "`abc` in sqlite:////repo/mlflow.db"
    assert "s3cret" not in pr_report.run_link(run, "postgresql://me:s3cret@db/mlflow")
    assert pr_report.run_link({"enabled": False}, "sqlite:///x").startswith("no MLflow run")
    assert pr_report.run_link({}, "sqlite:///x").startswith("no MLflow run")
