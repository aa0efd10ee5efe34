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
import signal
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib
import mlflow
import torch
from torch import nn
from torch.nn.utils import prune

from {{ cookiecutter.package_name }} import data, files, measure, models, params, tracking
from {{ cookiecutter.package_name }}.train import add_stats, batch_stats, predict, primary_metric, scores

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CHECKPOINT = Path("models/model.safetensors")
PREPARED = Path("data/prepared")
RUN_FILE = "metrics/mlflow.json"
DEPLOY_DIR = "models/deployable"
METRICS = "metrics/optimize.json"
REPORT = "reports/optimize.json"
TABLE = "reports/optimize.md"
PARETO = "plots/optimize/pareto.png"


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


def ort_session(path, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ORT's worker threads spin by default and steal the cores from PyTorch timed in the same process.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


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

def interleaved_latency(fns, x, warmup, rounds, baseline="fp32"):
    """Time every fn(x) once per round, the order rotating each round so no variant always runs first.
    Returns {name: latency stats + speedup (median of per-round baseline / variant ratios)}."""
    names = list(fns)
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):
                fn(x)
        times = {n: [] for n in names}
        for r in range(rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter_ns()
                fns[n](x)
                times[n].append((time.perf_counter_ns() - start) / 1e9)
    return {n: {**measure.latency_stats(times[n], x.shape[0]), "speedup": pairwise_speedup(times[baseline], times[n])}
            for n in names}


def pairwise_speedup(baseline, variant):
    return statistics.median(b / v for b, v in zip(baseline, variant, strict=True))


def evaluate_variant(fn, images, targets, task, num_classes, batch_size):
    """(quality scores, predictions) of fn on uint8 images (N, 3, H, W)."""
    stats, preds = None, []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            logits = fn(data.to_float(images[i:i + batch_size])).float()
            y = targets[i:i + batch_size]
            stats = add_stats(stats, batch_stats(logits, y, task, num_classes))
            preds.append(predict(logits, task, num_classes))
    return scores(task, stats), torch.cat(preds)


def choose(table, metric, min_quality_ratio):
    """The fastest variant (batch-1 p50) whose quality is at least min_quality_ratio x fp32's."""
    floor = min_quality_ratio * table["fp32"][metric]
    eligible = {n: v for n, v in table.items() if v[metric] >= floor}
    return min(eligible, key=lambda n: eligible[n]["latency_batch_1"]["p50_ms"])


def pareto_plot(table, metric, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, v in table.items():
        ax.scatter(v["latency_batch_1"]["p50_ms"], v[metric], s=30 + 4 * v["size_mb"])
        ax.annotate(f"{name} ({v['size_mb']:.1f} MB)", (v["latency_batch_1"]["p50_ms"], v[metric]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="batch-1 latency p50 (ms)", ylabel=f"test {metric}", title="Variants: latency vs quality")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown_table(table, metric, chosen):
    head = (f"| variant | size MB | gzip MB | size change | b1 p50 ms | b1 speedup | bN p50 ms | bN speedup | "
            f"{metric} | change | agreement |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = "".join(
        f"| {n}{' (deployable)' if n == chosen else ''} | {v['size_mb']:.2f} | {v['gzip_mb']:.2f} | "
        f"{v['size_change']:+.1%} | {v['latency_batch_1']['p50_ms']:.2f} | {v['latency_batch_1']['speedup']:.2f}x | "
        f"{v['latency_batch_n']['p50_ms']:.2f} | {v['latency_batch_n']['speedup']:.2f}x | {v[metric]:.4f} | "
        f"{v[metric + '_change']:+.4f} | {v['agreement']:.4f} |\n" for n, v in table.items())
    return head + rows


# --- the stage ----------------------------------------------------------------------------------------------

def main():
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # end the MLflow run KILLED, not RUNNING
    p = params.load()
    files.require("optimize")
    op = p["optimize"]
    threads = torch.get_num_threads()
    model, model_args = models.load_checkpoint(CHECKPOINT)
    input_shape = models.checkpoint_info(CHECKPOINT)["input_shape"]
    task, num_classes = model_args["task"], model_args["num_classes"]
    metric = primary_metric(task)
    test_x, test_y = data.load_split(PREPARED / "test.npz")
    train_x, _ = data.load_split(PREPARED / "train.npz")

    with (tracking.closing(lambda: tracking.resume(p["mlflow"], RUN_FILE)) as run,
          tempfile.TemporaryDirectory() as tmp):
        tmp = Path(tmp)
        fns, sizes, artifacts, notes = {}, {}, {}, {}

        def add(name, fn, path):  # a variant: how to run it and the file it would ship as
            fns[name], sizes[name], artifacts[name] = fn, file_sizes(path), path

        add("fp32", model, CHECKPOINT)
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            onnxruntime = None
            notes["int8_onnxruntime"] = "not measured: onnxruntime is not installed (pip install onnxruntime)"
        if onnxruntime is not None:
            export_onnx(model, input_shape, tmp / "fp32.onnx")
            add("fp32_onnxruntime", ort_session(tmp / "fp32.onnx", threads), tmp / "fp32.onnx")
            if op["quantization"]["enabled"]:
                g = torch.Generator().manual_seed(p["seed"])
                pick = torch.randperm(len(train_x), generator=g)[:op["quantization"]["calibration_images"]]
                calibration = [data.to_float(train_x[pick[i:i + 8]]).numpy() for i in range(0, len(pick), 8)]
                quantize_onnx(tmp / "fp32.onnx", tmp / "int8.onnx", calibration)
                add("int8_onnxruntime", ort_session(tmp / "int8.onnx", threads), tmp / "int8.onnx")
        if op["pruning"]["enabled"]:
            pruned, sparsity = prune_global(model, op["pruning"]["amount"])
            models.save_checkpoint(tmp / "pruned.safetensors", pruned, model_args, input_shape=input_shape)
            add("pruned", pruned, tmp / "pruned.safetensors")
            notes["pruned"] = (f"sparsity {sparsity:.3f} of conv/linear weights; stored dense, so size and "
                               "dense-kernel latency barely change: gains need sparse kernels or structured pruning")

        lat = op["latency"]
        b1 = interleaved_latency(fns, torch.rand(1, *input_shape), lat["warmup"], lat["runs"])
        bn = interleaved_latency(fns, torch.rand(lat["batch_size"], *input_shape), lat["warmup"], lat["runs"])
        table = {}
        _, fp32_preds = evaluate_variant(model, test_x, test_y, task, num_classes, lat["batch_size"])
        for name, fn in fns.items():
            quality, preds = evaluate_variant(fn, test_x, test_y, task, num_classes, lat["batch_size"])
            table[name] = {**sizes[name], **quality, "latency_batch_1": b1[name], "latency_batch_n": bn[name],
                           "size_change": sizes[name]["size_mb"] / sizes["fp32"]["size_mb"] - 1,
                           "agreement": (preds == fp32_preds).double().mean().item()}
            if name == "pruned":
                table[name]["sparsity"] = sparsity
        for v in table.values():
            v[f"{metric}_change"] = v[metric] - table["fp32"][metric]
        chosen = choose(table, metric, op["select"]["min_quality_ratio"])

        metrics = {"deployable/speedup_batch_1": table[chosen]["latency_batch_1"]["speedup"],
                   "deployable/size_change": table[chosen]["size_change"],
                   f"deployable/{metric}_change": table[chosen][f"{metric}_change"]}
        for name, v in table.items():
            metrics.update({f"{name}/size_mb": v["size_mb"], f"{name}/gzip_mb": v["gzip_mb"],
                            f"{name}/p50_ms_batch_1": v["latency_batch_1"]["p50_ms"],
                            f"{name}/p90_ms_batch_1": v["latency_batch_1"]["p90_ms"],
                            f"{name}/speedup_batch_1": v["latency_batch_1"]["speedup"],
                            f"{name}/p50_ms_batch_n": v["latency_batch_n"]["p50_ms"],
                            f"{name}/speedup_batch_n": v["latency_batch_n"]["speedup"],
                            f"{name}/{metric}": v[metric], f"{name}/agreement": v["agreement"]})
        protocol = {"latency": "interleaved in one process, order rotated each round; speedup = median of "
                               "per-round fp32 / variant ratios", "batch_n": lat["batch_size"],
                    "warmup": lat["warmup"], "runs": lat["runs"], "quality_split": "test",
                    "selection": f"fastest batch-1 p50 with {metric} >= {op['select']['min_quality_ratio']} x fp32",
                    "quantization": "onnxruntime quantize_static, QDQ, uint8 activations, int8 per-channel weights, "
                                    "MinMax calibration", **measure.environment()}

        with files.atomic_path(DEPLOY_DIR, directory=True) as out:
            source = Path(artifacts[chosen])
            target = out / ("model.onnx" if source.suffix == ".onnx" else "model.safetensors")
            target.write_bytes(source.read_bytes())
            files.write_json(out / "deployable.json", {
                "variant": chosen, "file": target.name, "input_shape": input_shape, "model_args": model_args,
                "runtime": "onnxruntime" if target.suffix == ".onnx" else "pytorch",
                metric: table[chosen][metric], "p50_ms_batch_1": table[chosen]["latency_batch_1"]["p50_ms"]})
        files.write_json(REPORT, {"variants": table, "deployable": chosen, "notes": notes, "protocol": protocol})
        with files.atomic_path(TABLE) as t:
            t.write_text(markdown_table(table, metric, chosen) + "".join(f"\n- {k}: {v}" for k, v in notes.items()))
        Path(PARETO).parent.mkdir(parents=True, exist_ok=True)
        with files.atomic_path(PARETO) as t:
            pareto_plot(table, metric, t)
        files.write_json(METRICS, metrics)
        if run:
            mlflow.log_metrics({f"optimize/{k}": v for k, v in metrics.items()})
            mlflow.set_tag("deployable_variant", chosen)
            for path in (REPORT, TABLE, PARETO, f"{DEPLOY_DIR}/deployable.json"):
                mlflow.log_artifact(path, "optimize")
    print(markdown_table(table, metric, chosen))
    print(f"optimize: deployable = {chosen} -> {DEPLOY_DIR}/, {METRICS}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, ConnectionError, FileNotFoundError) as e:
        sys.exit(f"optimize: {type(e).__name__}: {e}")
