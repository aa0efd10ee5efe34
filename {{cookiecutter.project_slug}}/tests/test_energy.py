
import mlflow
import pytest

from {{ cookiecutter.package_name }}.lib import energy, tracking


def test_energy_is_logged_into_the_run_off_by_a_param_and_nothing_goes_into_the_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    ids = []
    for enabled in (True, False):
        with tracking.closing(mlflow.start_run, "stage_x", {"energy": {"enabled": enabled, "country": "FRA"}}) as run:
            sum(i * i for i in range(200_000))  # some work to measure
        ids.append(run.info.run_id)
    on, off = (mlflow.get_run(i) for i in ids)
    m, t = on.data.metrics, on.data.tags
    assert on.info.status == "FINISHED"
    assert m["stage_x/energy_kwh"] > 0 and m["stage_x/emissions_kg_co2eq"] > 0 and m["stage_x/energy_duration_s"] > 0
    # France's grid in codecarbon's offline table: far below a coal grid's ~0.8 kg CO2eq / kWh
    assert m["stage_x/emissions_kg_co2eq"] / m["stage_x/energy_kwh"] < 0.2
    assert t["stage_x.energy_method"].startswith("CPU: ") and "; GPU: " in t["stage_x.energy_method"]
    assert t["energy_country"] == "FRA"
    assert not any(k.endswith("energy_kwh") for k in off.data.metrics)
    assert {p.name for p in tmp_path.iterdir()} <= {"mlflow.db", "mlflow.db.lock", "mlruns"}  # no emissions.csv

    class Failed:  # codecarbon swallows its own errors: a tracker that failed has no data at stop
        def stop(self):
            pass

    with mlflow.start_run() as run:
        energy.log(Failed(), "stage_x", "FRA")
    failed = mlflow.get_run(run.info.run_id).data
    assert failed.tags["stage_x.energy_method"].startswith("not measured") and not failed.metrics


def test_an_unknown_country_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"mlflow.energy.country='XYZ'.*enabled: false"):
        energy.check_country("XYZ")


def test_an_unknown_country_stops_the_stage_before_its_run_opens(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    opened = []
    with pytest.raises(ValueError, match="mlflow.energy.country='XYZ'"):
        with tracking.closing(lambda: opened.append(mlflow.start_run()), "stage_x",
                              {"energy": {"enabled": True, "country": "XYZ"}}):
            pass
    assert opened == [] and mlflow.active_run() is None
