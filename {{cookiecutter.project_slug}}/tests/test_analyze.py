import json

import pytest
import torch
import torchvision
from torch import nn

from {{ cookiecutter.package_name }} import analyze
from {{ cookiecutter.package_name }}.lib import measure


# Correctness anchor: published parameter counts, and torchvision's documented "GFLOPS", which are
# multiply-accumulates (GMACs) at 224x224.
@pytest.mark.parametrize("name,params,modules,gmacs", [
    ("resnet18", 11_689_512, 68, 1.81),
    ("mobilenet_v2", 3_504_872, 213, 0.30),
    ("densenet121", 7_978_856, 433, 2.83),
])
def test_torchvision_anchor(name, params, modules, gmacs):
    model = torchvision.models.get_model(name, weights=None).eval()
    assert measure.parameters(model) == {"total": params, "trainable": params}
    assert measure.layers(model)["modules"] == modules
    _, flops = measure.layer_table(model, torch.rand(1, 3, 224, 224))
    assert flops / 2 / 1e9 == pytest.approx(gmacs, rel=0.02)


def test_layer_table_of_a_known_conv():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU())
    rows, flops = measure.layer_table(model, torch.rand(1, 3, 10, 10))
    conv = rows[0]
    # 8 output channels x 10 x 10 positions x (3 x 3 x 3) multiply-adds, 2 FLOPs each
    assert conv == {"name": "0", "type": "Conv2d", "params": 8 * 3 * 3 * 3, "output_shape": [1, 8, 10, 10],
                    "flops": 2 * 8 * 10 * 10 * 27}
    assert flops == conv["flops"] and rows[1]["type"] == "ReLU"


def test_memory_counts_weights_exactly_and_sees_activations():
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU())
    m = measure.memory(model, torch.rand(1, 3, 64, 64))
    assert m["weights_bytes"] == (64 * 27 + 64) * 4
    assert m["activation_peak_bytes"] >= 64 * 64 * 64 * 4  # at least the conv output is alive at once
    assert m["peak_rss_bytes"] > m["activation_peak_bytes"]


def test_latency_stats_from_known_samples():
    s = measure.latency_stats([i / 1000 for i in range(1, 101)], batch_size=4)  # 1..100 ms
    assert s["p50_ms"] == pytest.approx(50.5) and s["mean_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1) and s["iqr_ms"] == pytest.approx(49.5)
    assert s["throughput_per_s"] == pytest.approx(4 / 0.0505)
    assert "p99_ms" not in s  # 100 samples cannot support a 99th percentile
    assert "p99_ms" in measure.latency_stats([0.001] * 1000, batch_size=1)


def test_latency_samples_time_the_call():
    calls = []
    samples = measure.latency_samples(lambda: calls.append(1), warmup=3, runs=7)
    assert len(calls) == 10 and len(samples) == 7 and all(s >= 0 for s in samples)


@pytest.mark.stage
def test_analyze_stage_logs_into_the_pipeline_run(trained, runs):
    analyze.main()
    m = json.loads((trained / "metrics/analyze.json").read_text())
    report = json.loads((trained / "reports/analyze.json").read_text())
    assert m["params/total"] == report["summary"]["params"]["total"] > 0
    assert m["latency/batch_1/p50_ms"] > 0 and "latency/batch_2/p90_ms" in m
    assert report["summary"]["protocol"]["runs"] == 5 and report["layers"]
    assert "<table>" in (trained / "reports/analyze.html").read_text()
    explained = report["summary"]["explain"]
    assert m["explain/images"] == len(explained["rows"]) == len(explained["test_images"]) > 0
    assert m["explain/flagged"] == sum(r["flagged"] for r in explained["rows"])
    assert (trained / "plots/analyze/explanations.png").read_bytes().startswith(b"\x89PNG")
    (run,) = runs(trained)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["analyze/params/total"] == m["params/total"]
    assert run.data.metrics["analyze/explain/images"] == m["explain/images"]
    assert run.data.metrics["train/energy_kwh"] > 0 and run.data.metrics["analyze/energy_kwh"] > 0
