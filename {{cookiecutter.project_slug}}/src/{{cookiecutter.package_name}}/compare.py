"""compare: one table of the project's MLflow runs (each `dvc repro` / `dvc exp run` is one run).

    python -m {{ cookiecutter.package_name }}.compare                  # every finished run of the experiment
    python -m {{ cookiecutter.package_name }}.compare --max-runs 10 --out reports/compare

Quality, parameters, memory, latency, the deployable's size reduction and speedup, robustness score, security
findings and registry version, read back from what the stages logged (nothing is re-measured), as Markdown,
HTML and a latency / quality plot. A run that stopped before a stage shows that stage's columns empty.
"""

import argparse

import mlflow

from {{ cookiecutter.package_name }}.lib import files, params, paths, plots, report, stage, store, task

# (column, where it comes from: "tag:<name>" or "attr:<name>" or an MLflow metric key; {m} = the task's metric)
COLUMNS = [
    ("run", "attr:run_name"), ("dvc experiment", "tag:dvc_exp_name"), ("architecture", "tag:architecture"),
    ("encoder", "tag:encoder"), ("test {m}", "test/{m}"), ("params", "params/total"),
    ("weights MB", "analyze/memory/weights_mb"), ("activation peak MB", "analyze/memory/activation_peak_mb"),
    ("fp32 b1 p50 ms", "analyze/latency/batch_1/p50_ms"), ("fp32 b1 p90/p50", "analyze/latency/batch_1/p90_p50"),
    ("latency reliable", "analyze/latency/batch_1/reliable"), ("deployable", "tag:deployable_variant"),
    ("size change", "optimize/deployable/size_change"), ("b1 speedup", "optimize/deployable/speedup_batch_1"),
    ("speedup reliable", "optimize/deployable/latency_reliable"),
    ("robustness score", "robustness/score"), ("security FAIL", "robustness/security/fail"),
    ("security WARN", "robustness/security/warn"), ("registry version", "tag:registry_version"),
    ("run id", "attr:run_id"),
]


def row_of(run):
    m = task.primary_metric(run.data.tags.get("task", "segmentation"))
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
        if column in ("speedup reliable", "latency reliable") and value != "":
            value = "yes" if value else "UNRELIABLE"  # a noisy speedup is never shown as a plain number
        row[column.format(m=m)] = value
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m {{ cookiecutter.package_name }}.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-runs", type=int, default=50, help="newest N finished runs (default 50)")
    parser.add_argument("--out", default=str(paths.COMPARE), help="output prefix for .md, .html, .png (%(default)s)")
    args = parser.parse_args(argv)
    if args.max_runs < 1:
        parser.error(f"--max-runs {args.max_runs}: must be >= 1")
    cfg = params.load()["mlflow"]
    if not cfg["enabled"]:
        parser.error("mlflow.enabled is false in params.yaml: there are no runs to compare")
    store.connect(cfg, store.repo_root())
    if mlflow.get_experiment_by_name(cfg["experiment"]) is None:
        parser.error(f"no MLflow experiment {cfg['experiment']!r} in {store.mask(mlflow.get_tracking_uri())}: "
                     "run dvc repro first")
    runs = mlflow.search_runs(experiment_names=[cfg["experiment"]], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=args.max_runs, output_format="list")
    rows = [row_of(r) for r in runs]
    table = report.markdown(rows) if rows else "(no finished runs)\n"
    with files.atomic_path(f"{args.out}.md") as t:
        t.write_text(table)
    with files.atomic_path(f"{args.out}.png") as t:
        plots.runs(rows, t)
    with files.atomic_path(f"{args.out}.html") as t:
        t.write_text(report.page(f"Model comparison: {cfg['experiment']} ({len(rows)} runs)",
                                 report.rows_table(rows) + report.image(f"{args.out}.png", "latency vs quality")))
    print(table + f"compare: {len(rows)} runs -> {args.out}.md, {args.out}.html, {args.out}.png")


if __name__ == "__main__":
    stage.run("compare", main)
