"""optimize: int8 quantization and pruning, each with its measured size, speed and quality against fp32.

    python -m {{ cookiecutter.package_name }}.optimize    # or: dvc repro optimize

Variants: `fp32` (PyTorch eager, the baseline), `fp32_onnxruntime` (the same weights in ONNX Runtime, to
separate the runtime's gain from quantization's), `int8_onnxruntime` (post-training static QDQ quantization,
per-channel weights, calibrated on training images) and `pruned` (global magnitude pruning of conv / linear
weights). Latency is measured in one process, variants interleaved round by round, and each speedup is the
median of per-round ratios against fp32. A rule from params picks the deployable variant.

Reads params `optimize`, `mlflow`; the checkpoint, data/prepared and train's run reference. Writes
models/deployable/ (model.onnx or model.safetensors + deployable.json), metrics/optimize.json,
reports/optimize.{json,md}, plots/optimize/pareto.png; logs the same into the pipeline's MLflow run.
"""

import copy
import gzip
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from {{ cookiecutter.package_name }}.lib import (
    dataset,
    files,
    measure,
    models,
    paths,
    plots,
    report,
    runtime,
    stage,
    task,
    tracking,
)

# --- variants -----------------------------------------------------------------------------------------------

def export_onnx(model, input_shape, path):
    """fp32 ONNX with a dynamic batch dimension. The TorchScript-based exporter: the dynamo one needs the
    onnxscript package and gives the same graph for these CNNs."""
    with warnings.catch_warnings():  # the deprecation notice of the TorchScript exporter, chosen on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, torch.rand(2, *input_shape), str(path), dynamo=False, opset_version=17,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})


def quantize_onnx(fp32_path, int8_path, calibration):
    """Static QDQ int8: uint8 activations, int8 per-channel weights, ranges from `calibration`, a list of
    float32 (B, 3, H, W) arrays. The combination ONNX Runtime's x86 kernels run fastest."""
    from onnxruntime import quantization as q

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    pre = Path(int8_path).with_suffix(".pre.onnx")
    q.quant_pre_process(str(fp32_path), str(pre))
    q.quantize_static(str(pre), str(int8_path), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
    pre.unlink()


def prune_global(model, amount):
    """A copy of `model` with the `amount` smallest-magnitude conv / linear weights (over all layers at once)
    set to zero. Returns (model, sparsity reached over those weights)."""
    pruned = copy.deepcopy(model)
    targets = [(m, "weight") for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for m, name in targets:
        prune.remove(m, name)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
    return pruned, zeros / sum(m.weight.numel() for m, _ in targets)


def file_sizes(path):
    raw = Path(path).read_bytes()
    return {"size_mb": len(raw) / 2 ** 20, "gzip_mb": len(gzip.compress(raw, 6)) / 2 ** 20}


# --- measurements -------------------------------------------------------------------------------------------

def choose(table, metric, min_quality_ratio):
    """The fastest variant (batch-1 p50) whose quality is at least min_quality_ratio x fp32's."""
    floor = min_quality_ratio * table["fp32"][metric]
    eligible = {n: v for n, v in table.items() if v[metric] >= floor}
    return min(eligible, key=lambda n: eligible[n]["latency_batch_1"]["p50_ms"])


def build_variants(model, model_args, input_shape, op, seed, train_images, tmp):
    """{name: (callable, file it would ship as)} and notes on what was not measured or how to read a variant."""
    variants, notes = {"fp32": (model, paths.CHECKPOINT)}, {}
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        notes["int8_onnxruntime"] = "not measured: onnxruntime is not installed (pip install onnxruntime)"
        onnxruntime = None
    threads = torch.get_num_threads()
    if onnxruntime is not None:
        export_onnx(model, input_shape, tmp / "fp32.onnx")
        variants["fp32_onnxruntime"] = (runtime.ort_session(tmp / "fp32.onnx", threads), tmp / "fp32.onnx")
        if op["quantization"]["enabled"]:
            q = op["quantization"]
            pick = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))
            calibration = [dataset.to_float(train_images[i]).numpy() for i in pick[:q["calibration_images"]].split(
                q["calibration_batch_size"])]  # float32 (B, 3, H, W) batches
            quantize_onnx(tmp / "fp32.onnx", tmp / "int8.onnx", calibration)
            variants["int8_onnxruntime"] = (runtime.ort_session(tmp / "int8.onnx", threads), tmp / "int8.onnx")
    if op["pruning"]["enabled"]:
        pruned, sparsity = prune_global(model, op["pruning"]["amount"])
        models.save_checkpoint(tmp / "pruned.safetensors", pruned, model_args, input_shape=input_shape)
        variants["pruned"] = (pruned, tmp / "pruned.safetensors")
        notes["pruned"] = (f"sparsity {sparsity:.3f} of conv/linear weights; stored dense, so size and dense-kernel "
                           "latency barely change: gains need sparse kernels or structured pruning")
    return variants, notes


def timed(fns, input_shape, lat):
    """Interleaved latency at batch 1 and N, re-measured (up to lat['remeasure'] times) while a figure is
    unreliable; each variant's figures carry `reliable` and, when not, the reason."""
    rel = lat["reliability"]
    for attempt in range(lat["remeasure"] + 1):
        b1 = measure.interleaved_latency(fns, torch.rand(1, *input_shape), lat["warmup"], lat["runs"])
        bn = measure.interleaved_latency(fns, torch.rand(lat["batch_size"], *input_shape), lat["warmup"], lat["runs"])
        verdicts = {(n, b): measure.reliability(t[n], rel["max_p90_p50"], rel["max_interval_width"])
                    for b, t in (("b1", b1), ("bn", bn)) for n in fns}
        if all(ok for ok, _ in verdicts.values()):
            break
        bad = [f"{n} {b}: {why}" for (n, b), (ok, why) in verdicts.items() if not ok]
        print(f"optimize: latency unreliable (attempt {attempt + 1}): {'; '.join(bad)}")
    for b, t in (("b1", b1), ("bn", bn)):
        for n in fns:
            t[n]["reliable"], t[n]["reliability"] = verdicts[(n, b)][0], verdicts[(n, b)][1]
    return b1, bn


def measure_variants(variants, input_shape, lat, test, t):
    """{name: sizes, test quality, latency at batch 1 and N (interleaved), agreement with fp32's predictions}."""
    b1, bn = timed({name: fn for name, (fn, _) in variants.items()}, input_shape, lat)
    metric, table, fp32_size, fp32_preds = t.metric, {}, None, None
    for name, (fn, path) in variants.items():
        out = task.score_batches(fn, dataset.batches(*test, lat["batch_size"]), t, keep_predictions=True)
        fp32_preds = out["predictions"] if fp32_preds is None else fp32_preds  # fp32 comes first
        sizes = file_sizes(path)
        fp32_size = fp32_size or sizes["size_mb"]
        table[name] = {**sizes, **task.scores(t, task.reduce(out["stats"])), "latency_batch_1": b1[name],
                       "latency_batch_n": bn[name], "size_change": sizes["size_mb"] / fp32_size - 1,
                       "agreement": (out["predictions"] == fp32_preds).double().mean().item()}
    for v in table.values():
        v[f"{metric}_change"] = v[metric] - table["fp32"][metric]
    return table


def variant_metrics(table, chosen, metric):
    """metrics/optimize.json: the deployable's headline figures (every variant's are in reports/optimize.json)."""
    b1 = table[chosen]["latency_batch_1"]
    return {"deployable/p50_ms_batch_1": b1["p50_ms"], "deployable/p90_p50_batch_1": b1["p90_p50"],
            "deployable/speedup_batch_1": b1["speedup"], "deployable/speedup_batch_1_ci_low": b1["speedup_ci_low"],
            "deployable/speedup_batch_1_ci_high": b1["speedup_ci_high"], "deployable/latency_reliable": int(
                b1["reliable"]), "deployable/size_change": table[chosen]["size_change"],
            f"deployable/{metric}": table[chosen][metric], f"deployable/{metric}_change": table[chosen][
                f"{metric}_change"]}


def write_deployable(source, chosen, table, metric, input_shape, model_args):
    with files.atomic_path(paths.DEPLOY_DIR, directory=True) as out:
        target = out / ("model.onnx" if source.suffix == ".onnx" else "model.safetensors")
        target.write_bytes(source.read_bytes())
        files.write_json(out / paths.DEPLOY_INFO.name, {
            "variant": chosen, "file": target.name, "input_shape": input_shape, "model_args": model_args,
            "runtime": "onnxruntime" if target.suffix == ".onnx" else "pytorch",
            metric: table[chosen][metric], "p50_ms_batch_1": table[chosen]["latency_batch_1"]["p50_ms"],
            "latency_reliable": table[chosen]["latency_batch_1"]["reliable"],
            "latency_reliability": table[chosen]["latency_batch_1"]["reliability"]})


# --- the stage ----------------------------------------------------------------------------------------------

def main():
    st = stage.begin("optimize")
    p, op, lat = st.params, st.section, st.section["latency"]
    model, model_args = models.load_checkpoint(paths.CHECKPOINT)
    input_shape = models.checkpoint_info(paths.CHECKPOINT)["input_shape"]
    t = task.Task.of(model_args)
    metric = t.metric
    with tracking.pipeline_run(p["mlflow"], st.name) as run, tempfile.TemporaryDirectory() as tmp:
        variants, notes = build_variants(model, model_args, input_shape, op, p["seed"],
                                         dataset.load_split(paths.split("train"))[0], Path(tmp))
        table = measure_variants(variants, input_shape, lat, dataset.load_split(paths.split("test")), t)
        chosen = choose(table, metric, op["select"]["min_quality_ratio"])
        metrics = variant_metrics(table, chosen, metric)
        protocol = {"latency": "interleaved in one process, order rotated each round; speedup = median of "
                               "per-round fp32 / variant ratios", "batch_n": lat["batch_size"],
                    "warmup": lat["warmup"], "runs": lat["runs"], "quality_split": "test",
                    "reliability": f"p90/p50 <= {lat['reliability']['max_p90_p50']} and speedup 95% interval "
                                   f"<= {lat['reliability']['max_interval_width']:.0%} of it, re-measured up to "
                                   f"{lat['remeasure']} times",
                    "selection": f"fastest batch-1 p50 with {metric} >= {op['select']['min_quality_ratio']} x fp32",
                    "quantization": "onnxruntime quantize_static, QDQ, uint8 activations, int8 per-channel weights, "
                                    "MinMax calibration", **measure.environment()}
        write_deployable(Path(variants[chosen][1]), chosen, table, metric, input_shape, model_args)
        files.write_json(paths.OPTIMIZE_REPORT, {"variants": table, "deployable": chosen, "notes": notes,
                                                 "protocol": protocol})
        markdown = report.markdown(report.variant_rows(table, metric, chosen))
        with files.atomic_path(paths.OPTIMIZE_TABLE) as t:
            t.write_text(markdown + "".join(f"\n- {k}: {v}" for k, v in notes.items()))
        with files.atomic_path(paths.PARETO) as t:
            plots.pareto(table, metric, t)
        st.publish(run, metrics, (paths.OPTIMIZE_REPORT, paths.OPTIMIZE_TABLE, paths.PARETO, paths.DEPLOY_INFO),
                   {"deployable_variant": chosen}, headline=(f"deployable/{metric}", "deployable/p50_ms_batch_1",
                                                             "deployable/speedup_batch_1", "deployable/size_change"))
    print(markdown)
    print(f"optimize: deployable = {chosen} -> {paths.DEPLOY_DIR}/, {st.metrics_file}")


if __name__ == "__main__":
    stage.run("optimize", main)
