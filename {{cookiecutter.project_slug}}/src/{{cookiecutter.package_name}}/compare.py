"""compare: one table of the project's MLflow runs (each `dvc repro` / `dvc exp run` is one run).

    python -m {{ cookiecutter.package_name }}.compare                  # every finished run of the experiment
    python -m {{ cookiecutter.package_name }}.compare --max-runs 10 --out reports/compare

Quality, parameters, memory, latency, the deployable's size reduction and speedup, robustness score, security
findings and registry version, read back from what the stages logged (nothing is re-measured), as Markdown,
HTML and a latency / quality plot. A run that stopped before a stage shows that stage's columns empty.
"""

import argparse
import sys

import matplotlib
import mlflow

from {{ cookiecutter.package_name }} import files, params, report, tracking
from {{ cookiecutter.package_name }}.train import primary_metric

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (column, where it comes from: "tag:<name>" or "attr:<name>" or an MLflow metric key; {m} = the task's metric)
COLUMNS = [
    ("run", "attr:run_name"), ("dvc experiment", "tag:dvc_exp_name"), ("architecture", "tag:architecture"),
    ("encoder", "tag:encoder"), ("test {m}", "test/{m}"), ("params", "params/total"),
    ("weights MB", "analyze/memory/weights_mb"), ("activation peak MB", "analyze/memory/activation_peak_mb"),
    ("fp32 b1 p50 ms", "analyze/latency/batch_1/p50_ms"), ("deployable", "tag:deployable_variant"),
    ("size change", "optimize/deployable/size_change"), ("b1 speedup", "optimize/deployable/speedup_batch_1"),
    ("robustness score", "robustness/score"), ("security FAIL", "robustness/security/fail"),
    ("security WARN", "robustness/security/warn"), ("registry version", "tag:registry_version"),
    ("run id", "attr:run_id"),
]


def row_of(run):
    m = primary_metric(run.data.tags.get("task", "segmentation"))
    row = {}
    for column, source in COLUMNS:
        kind, key = source.split(":", 1) if ":" in source else ("metric", source)
        if kind == "tag":
            value = run.data.tags.get(key, "")
        elif kind == "attr":
            value = getattr(run.info, key)
        else:
            value = run.data.metrics.get(key.format(m=m), "")
        if column == "params" and value != "":
            value = int(value)
        row[column.format(m=m)] = value
    return row


def markdown(rows):
    if not rows:
        return "(no finished runs)\n"
    keys = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return ("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
            + "".join("| " + " | ".join(fmt(r[k]) for k in keys) + " |\n" for r in rows))


def plot(rows, path):
    quality = next((k for k in rows[0] if k.startswith("test ")), None) if rows else None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r.get(quality, "") != "" and r["fp32 b1 p50 ms"] != "":
            ax.scatter(r["fp32 b1 p50 ms"], r[quality], s=20 + (r["params"] or 0) / 2e5)
            ax.annotate(f"{r['architecture']}/{r['encoder']} {r['run'][-15:]}", (r["fp32 b1 p50 ms"], r[quality]),
                        fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="fp32 batch-1 latency p50 (ms)", ylabel=quality or "quality",
           title="Runs: latency vs quality (marker area ~ parameters)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m {{ cookiecutter.package_name }}.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-runs", type=int, default=50, help="newest N finished runs (default 50)")
    parser.add_argument("--out", default="reports/compare", help="output prefix for .md, .html, .png (%(default)s)")
    args = parser.parse_args(argv)
    if args.max_runs < 1:
        parser.error(f"--max-runs {args.max_runs}: must be >= 1")
    cfg = params.load()["mlflow"]
    if not cfg["enabled"]:
        parser.error("mlflow.enabled is false in params.yaml: there are no runs to compare")
    tracking.connect(cfg, tracking.repo_root())
    if mlflow.get_experiment_by_name(cfg["experiment"]) is None:
        parser.error(f"no MLflow experiment {cfg['experiment']!r} in {mlflow.get_tracking_uri()}: run dvc repro first")
    runs = mlflow.search_runs(experiment_names=[cfg["experiment"]], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=args.max_runs, output_format="list")
    rows = [row_of(r) for r in runs]
    table = markdown(rows)
    with files.atomic_path(f"{args.out}.md") as t:
        t.write_text(table)
    with files.atomic_path(f"{args.out}.png") as t:
        plot(rows, t)
    with files.atomic_path(f"{args.out}.html") as t:
        t.write_text(report.page(f"Model comparison: {cfg['experiment']} ({len(rows)} runs)",
                                 report.rows_table(rows) + report.image(f"{args.out}.png", "latency vs quality")))
    print(table + f"compare: {len(rows)} runs -> {args.out}.md, {args.out}.html, {args.out}.png")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, ConnectionError) as e:
        sys.exit(f"compare: {type(e).__name__}: {e}")
