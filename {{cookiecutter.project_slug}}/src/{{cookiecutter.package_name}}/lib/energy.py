"""Energy and CO2-equivalent of a tracked stage, measured by codecarbon offline (no network, no files) and logged
into its MLflow run with the method in words: measured (RAPL, NVML) or estimated (CPU load x TDP)."""

import mlflow

# codecarbon's CPU modes (codecarbon.core.resource_tracker / external.hardware), in words for the report.
CPU_METHODS = {"intel_rapl": "RAPL energy counters (measured)", "windows_emi": "Windows energy meter (measured)",
               "intel_power_gadget": "Intel Power Gadget (measured)", "apple_powermetrics": "powermetrics (measured)",
               "cpu_load": "CPU load x TDP (estimated)", "constant": "50% of TDP (constant estimate)"}


def check_country(country):
    """The country has a carbon intensity in codecarbon's own table (offline mode needs one)."""
    from codecarbon.input import DataSource

    known = DataSource().get_global_energy_mix_data()
    if country not in known:
        raise ValueError(f"mlflow.energy.country={country!r}: codecarbon has no carbon intensity for it; use an ISO "
                         f"3166-1 alpha-3 code it knows ({', '.join(sorted(known)[:8])}, ...; "
                         "codecarbon/data/private_infra/global_energy_mix.json) or set mlflow.energy.enabled: false")


def start(country, stage_name):
    """codecarbon's offline tracker, started (the country checked by check_country): no network, nothing written
    to files, quiet (errors only). tracking_mode="process": this stage's own CPU share and memory, not other
    jobs' on a shared machine."""
    import logging

    from codecarbon import OfflineEmissionsTracker

    # Its logger says INFO lines and a warning at every start, before log_level applies.
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    tracker = OfflineEmissionsTracker(country_iso_code=country, project_name=stage_name, output_methods=[],
                                      log_level="error", tracking_mode="process", allow_multiple_runs=True)
    tracker.start()
    return tracker


def stop(tracker):
    if tracker is not None:
        tracker.stop()


def method(tracker):
    """How codecarbon measured or estimated each part, CPU first ("CPU: RAPL energy counters (measured), AMD EPYC
    7B13; GPU: none found; RAM: ..."), from the hardware it set up."""
    parts = {}
    for hw in tracker._hardware:  # codecarbon keeps no public list of its methods
        kind = type(hw).__name__
        if kind == "CPU":
            mode = getattr(hw, "_mode", "unknown")
            how = CPU_METHODS.get(mode, mode)
            if mode in ("cpu_load", "constant"):  # codecarbon's TDP for the model x physical CPUs, or its fallback
                how += f", full load = {hw._tdp} W" + (" (generic: CPU model not in codecarbon's table)"
                                                       if getattr(hw, "_is_generic_tdp", False) else "")
            parts["CPU"] = f"CPU: {how}, {hw.get_model() or 'model unknown'}"
        elif kind == "GPU":
            parts["GPU"] = f"GPU: NVML power readings (measured), {tracker._conf.get('gpu_model') or 'model unknown'}"
        elif kind == "RAM":
            parts["RAM"] = "RAM: codecarbon's power model per GB in use (estimated)"
        else:
            parts[kind] = f"{kind}: {hw.description()}"
    parts.setdefault("GPU", "GPU: none found")
    order = ["CPU", "GPU", "RAM"]
    return "; ".join(parts[k] for k in sorted(parts, key=lambda k: order.index(k) if k in order else len(order)))


def log(tracker, stage_name, country):
    """Stop the tracker; log <stage>/energy_kwh, <stage>/emissions_kg_co2eq, <stage>/energy_duration_s and the
    method (tag <stage>.energy_method) into the active run."""
    tracker.stop()
    d = getattr(tracker, "final_emissions_data", None)
    if d is None:  # codecarbon's start and stop swallow their own exceptions: say so rather than log zeros
        mlflow.set_tag(f"{stage_name}.energy_method", "not measured: codecarbon failed (its errors are logged above)")
        return
    mlflow.log_metrics({f"{stage_name}/energy_kwh": d.energy_consumed, f"{stage_name}/emissions_kg_co2eq": d.emissions,
                        f"{stage_name}/energy_duration_s": d.duration})
    mlflow.set_tags({f"{stage_name}.energy_method": method(tracker), "energy_country": country})
