import json

import numpy as np
import pytest
import torch
from torch import nn

from {{ cookiecutter.package_name }} import optimize
from {{ cookiecutter.package_name }}.lib import measure, models, report, runtime


def test_global_pruning_reaches_the_asked_sparsity_and_keeps_the_original():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 10))
    pruned, sparsity = optimize.prune_global(model, 0.5)
    weights = [m.weight for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in weights)
    assert sparsity == pytest.approx(round(0.5 * total) / total)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.5 * total)
    assert not (model[0].weight == 0).any()  # a copy was pruned, not the model


def test_pairwise_speedup_is_the_median_of_round_ratios():
    assert measure.pairwise_speedup([10, 20, 30], [5, 5, 30]) == 2.0  # ratios 2, 4, 1


def test_choose_the_fastest_variant_within_the_quality_floor():
    def v(p50, dice):
        return {"dice": dice, "latency_batch_1": {"p50_ms": p50}}

    table = {"fp32": v(10, 0.90), "int8": v(3, 0.80), "fp32_ort": v(5, 0.895)}
    assert optimize.choose(table, "dice", 0.99) == "fp32_ort"  # int8 is faster but loses too much
    assert optimize.choose(table, "dice", 0.85) == "int8"


def test_interleaved_latency_reports_every_variant():
    fns = {"fp32": lambda x: x * 2, "other": lambda x: x + 1}
    out = measure.interleaved_latency(fns, torch.rand(2, 3), warmup=1, rounds=9)
    assert set(out) == {"fp32", "other"} and out["fp32"]["speedup"] == 1.0 and out["other"]["runs"] == 9


@pytest.fixture
def unet(tmp_path):
    torch.manual_seed(0)
    model = models.build_model("segmentation", "Unet", "resnet18", 2, [0.5] * 3, [0.25] * 3).eval()
    # Some BatchNorm statistics, as a trained model would have, so activations are not degenerate.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, 32, 32))
    return model.eval()


def test_int8_onnx_keeps_shapes_and_predictions(unet, tmp_path):
    pytest.importorskip("onnxruntime")
    optimize.export_onnx(unet, [3, 32, 32], tmp_path / "fp32.onnx")
    calibration = [torch.rand(8, 3, 32, 32).numpy() for _ in range(4)]
    optimize.quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calibration)
    x = torch.rand(3, 3, 32, 32)  # a batch size not seen at export: the batch dimension is dynamic
    fp32 = runtime.ort_session(tmp_path / "fp32.onnx", 1)(x)
    int8 = runtime.ort_session(tmp_path / "int8.onnx", 1)(x)
    with torch.inference_mode():
        eager = unet(x)
    assert fp32.shape == int8.shape == eager.shape == (3, 1, 32, 32)
    assert torch.allclose(fp32, eager, atol=1e-4)
    assert np.corrcoef(int8.ravel(), eager.ravel())[0, 1] > 0.95
    sizes = optimize.file_sizes(tmp_path / "int8.onnx"), optimize.file_sizes(tmp_path / "fp32.onnx")
    assert sizes[0]["size_mb"] < 0.3 * sizes[1]["size_mb"]


@pytest.mark.stage
def test_optimize_stage(trained, runs):
    optimize.main()
    report = json.loads((trained / "reports/optimize.json").read_text())
    metrics = json.loads((trained / "metrics/optimize.json").read_text())
    chosen = report["deployable"]
    deploy = json.loads((trained / "models/deployable/deployable.json").read_text())
    assert deploy["variant"] == chosen and (trained / "models/deployable" / deploy["file"]).exists()
    assert {"fp32", "pruned"} <= set(report["variants"])
    assert report["variants"]["fp32"]["latency_batch_1"]["speedup"] == 1.0
    assert metrics["deployable/speedup_batch_1"] == report["variants"][chosen]["latency_batch_1"]["speedup"]
    assert (trained / "plots/optimize/pareto.png").stat().st_size > 0
    (run,) = runs(trained)
    assert run.info.status == "FINISHED" and run.data.tags["deployable_variant"] == chosen


@pytest.mark.stage
def test_missing_onnxruntime_is_reported_not_measured(trained, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    optimize.main()
    report = json.loads((trained / "reports/optimize.json").read_text())
    assert set(report["variants"]) == {"fp32", "pruned"}
    assert "not measured" in report["notes"]["int8_onnxruntime"]
    assert "not measured" in (trained / "reports/optimize.md").read_text()


def test_injected_noise_is_flagged_and_remeasured(capsys):
    # One variant stalls on some calls (another process taking the core): its figures must be marked, not used.
    import itertools
    import time

    stalls = itertools.cycle([0, 0, 0, 0.02])
    fns = {"fp32": lambda x: time.sleep(0.002), "noisy": lambda x: time.sleep(0.002 + next(stalls))}
    lat = {"batch_size": 2, "warmup": 1, "runs": 12, "remeasure": 1,
           "reliability": {"max_p90_p50": 1.5, "max_interval_width": 0.25}}
    b1, bn = optimize.timed(fns, [3, 4, 4], lat)
    assert not b1["noisy"]["reliable"] and "p90/p50" in b1["noisy"]["reliability"]
    assert "attempt 2" in capsys.readouterr().out  # measured again before giving up
    row = report.variant_rows({"noisy": {"size_mb": 1.0, "gzip_mb": 1.0, "size_change": 0.0, "latency_batch_1": b1[
        "noisy"], "latency_batch_n": bn["noisy"], "dice": 0.9, "dice_change": 0.0, "agreement": 1.0}}, "dice",
                              "noisy")[0]
    assert row["b1 speedup"].startswith("UNRELIABLE")


def test_reliability_verdict_on_known_figures():
    steady = {"p90_p50": 1.1, "speedup": 2.0, "speedup_ci_low": 1.9, "speedup_ci_high": 2.1}
    assert measure.reliability(steady, 1.5, 0.25) == (True, "ok")
    assert not measure.reliability({**steady, "p90_p50": 3.2}, 1.5, 0.25)[0]
    ok, why = measure.reliability({**steady, "speedup_ci_low": 1.0, "speedup_ci_high": 3.0}, 1.5, 0.25)
    assert not ok and "interval [1.00, 3.00]" in why
