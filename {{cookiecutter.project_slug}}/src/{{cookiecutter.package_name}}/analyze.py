"""analyze: measure the trained model: parameters, layers, FLOPs, memory, file size, latency percentiles, and
explain it: Grad-CAM maps on a seeded handful of test images, with the model-randomisation check (explain.py).

    python -m {{ cookiecutter.package_name }}.analyze     # or: dvc repro analyze

Reads params `seed`, `analyze`, `mlflow`, the checkpoint, the test split and the run reference train wrote.
Writes metrics/analyze.json, reports/analyze.json, reports/analyze.html, reports/analyze_layers.csv and
plots/analyze/explanations.png, and logs the same metrics and files into the pipeline's MLflow run.
"""

import csv
import io

import numpy as np
import torch

from {{ cookiecutter.package_name }}.lib import (
    dataset,
    explain,
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


def analyze(model, input_shape, batch_size, warmup, runs):
    """All measurements of `model` at `input_shape` (C, H, W); returns (summary dict, per-layer rows)."""
    model.eval()
    x1 = torch.rand(1, *input_shape)
    rows, flops = measure.layer_table(model, x1)
    summary = {
        "family": measure.family(model), "input_shape": list(input_shape),
        "params": measure.parameters(model), "layers": measure.layers(model),
        "flops": flops, "macs": flops // 2,
        "memory": measure.memory(model, x1),
        "latency": {"batch_1": measure.model_latency(model, x1, warmup, runs),
                    f"batch_{batch_size}": measure.model_latency(model, torch.rand(batch_size, *input_shape),
                                                                 warmup, runs)},
        "protocol": {"warmup": warmup, "runs": runs, "mode": "eval + torch.inference_mode", "input": "uniform [0, 1)",
                     **measure.environment()},
    }
    return summary, rows


def metrics_of(summary, file_bytes, max_p90_p50):
    """The flat dict for metrics/analyze.json and MLflow (numbers only); each latency with its dispersion
    (p90/p50) and a reliability verdict (1: p90/p50 <= max_p90_p50)."""
    mb = 2 ** 20
    m = {"params/total": summary["params"]["total"], "params/trainable": summary["params"]["trainable"],
         "layers/modules": summary["layers"]["modules"], "layers/leaf": summary["layers"]["leaf"],
         "flops/total": summary["flops"], "macs/total": summary["macs"],
         "memory/weights_mb": summary["memory"]["weights_bytes"] / mb,
         "memory/activation_peak_mb": summary["memory"]["activation_peak_bytes"] / mb,
         "memory/peak_rss_mb": summary["memory"]["peak_rss_bytes"] / mb,
         "size/checkpoint_mb": file_bytes / mb}
    for batch, stats in summary["latency"].items():
        m.update({f"latency/{batch}/{k}": stats[k] for k in ("p50_ms", "p90_ms", "p90_p50", "throughput_per_s")})
        m[f"latency/{batch}/reliable"] = int(stats["p90_p50"] <= max_p90_p50)
    return m


def explanations(model, model_args, split, count, seed, max_correlation):
    """Grad-CAM of the trained model and of the same architecture re-initialised from `seed`, on `count` test
    images chosen with `seed`; returns (images, targets, explain.explain's result, chosen indices)."""
    images, targets = dataset.load_split(split)
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), min(count, len(images)), replace=False))
    x, y = dataset.to_float(images[chosen]), targets[chosen]  # (N, 3, H, W) in [0, 1]; (N, H, W) or (N,)
    control = explain.randomised(lambda: models.build_model(**model_args), seed)
    result = explain.explain(model, control, x, task.Task.of(model_args), max_correlation)
    return x, y, result, chosen.tolist()


def draw_explanations(x, y, result, class_names, task_name, path):
    notes = [(f"rank corr. {r['spearman']:.2f}" if r["spearman"] is not None else r["note"])
             + (": FLAGGED" if r["flagged"] else "") for r in result["rows"]]
    plots.explanations(x, y, result["predictions"], {"Grad-CAM": result["trained"],
                                                      "Grad-CAM, random weights": result["randomised"]},
                       {"Grad-CAM, random weights": notes}, task_name, class_names, path,
                       title=f"Grad-CAM at model layer '{result['layer']}'; model-randomisation check "
                             "(Adebayo et al. 2018)")


def render_html(summary, metrics, rows):
    return report.page(f"Model analysis: {summary['family']}", (
        f"<h2>Summary</h2>{report.pairs_table(metrics.items())}"
        f"<h2>Explanations</h2>{report.image(paths.EXPLANATIONS, 'explanation maps')}"
        f"<h2>Protocol</h2>{report.pairs_table(summary['protocol'].items())}"
        f"<h2>Layers ({len(rows)} leaf modules)</h2>"
        f"{report.rows_table(rows, ['name', 'type', 'params', 'output_shape', 'flops'])}"))


def main():
    st = stage.begin("analyze")
    p, ap = st.params, st.section
    runtime.use_threads(ap["threads"])  # before the model is built: latency is measured on this many
    model, model_args = models.load_checkpoint(paths.CHECKPOINT)
    input_shape = models.checkpoint_info(paths.CHECKPOINT)["input_shape"]
    with tracking.pipeline_run(p["mlflow"], st.name) as run:
        summary, rows = analyze(model, input_shape, ap["batch_size"], ap["warmup"], ap["runs"])
        metrics = metrics_of(summary, paths.CHECKPOINT.stat().st_size, ap["max_p90_p50"])
        ep = ap["explain"]
        x, y, result, chosen = explanations(model, model_args, paths.split("test"), ep["images"], p["seed"],
                                            ep["max_rank_correlation"])
        metrics.update(explain.metrics_of(result["rows"]))
        with files.atomic_path(paths.EXPLANATIONS) as tmp:
            draw_explanations(x, y, result, files.read_json(paths.DATASET)["class_names"], model_args["task"], tmp)
        summary["explain"] = {"method": "Grad-CAM (captum LayerGradCam)", "layer": result["layer"],
                              "test_images": chosen, "max_rank_correlation": ep["max_rank_correlation"],
                              "rows": result["rows"]}
        files.write_json(paths.ANALYZE_REPORT, {"summary": summary, "metrics": metrics, "layers": rows})
        with files.atomic_path(paths.ANALYZE_HTML) as tmp:
            tmp.write_text(render_html(summary, metrics, rows))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["name", "type", "params", "output_shape", "flops"])
        writer.writeheader()
        writer.writerows(rows)
        with files.atomic_path(paths.ANALYZE_LAYERS) as tmp:
            tmp.write_text(buf.getvalue())
        st.publish(run, metrics, (paths.ANALYZE_REPORT, paths.ANALYZE_HTML, paths.ANALYZE_LAYERS, paths.EXPLANATIONS),
                   {"family": summary["family"], "analyze.cpu": summary["protocol"]["cpu"],
                    "analyze.threads": str(summary["protocol"]["threads"])},
                   headline=("params/total", "macs/total", "latency/batch_1/p50_ms"))
    b1 = summary["latency"]["batch_1"]
    print(f"analyze: {summary['family']} {metrics['params/total']:,} params, {summary['macs'] / 1e9:.3f} GMACs, "
          f"batch-1 p50 {b1['p50_ms']:.2f} ms (p90 {b1['p90_ms']:.2f}) on {summary['protocol']['threads']} "
          f"threads; Grad-CAM at {result['layer']}: {metrics['explain/flagged']} of {len(chosen)} maps flagged by the "
          f"randomisation check -> {st.metrics_file}, {paths.ANALYZE_HTML}, {paths.EXPLANATIONS}")


if __name__ == "__main__":
    stage.run("analyze", main)
