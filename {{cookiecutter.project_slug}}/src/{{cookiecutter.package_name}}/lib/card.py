"""The model card: who the model is (task, data, code, environment), how good it is (headline figures with their
intervals, the gates in words), built once as (field, value) pairs and rendered twice: the top of
reports/model.html, and the Markdown description of the registered version (within the registry's 5,000
characters).

    >>> gate_verdict([{"gate": "min_quality", "passed": True}])
    'passed: all 1 gates'
"""

import html

import yaml

from {{ cookiecutter.package_name }}.lib import environment, params, paths, report, tracking

STAGES_MEASURED = ("train", "analyze", "optimize", "robustness")  # energy logged before register writes the report


def params_changes(current, defaults):
    """[{param, value, default}] for every key whose value differs from `defaults` (the params.yaml the project
    was generated with), keys added or removed included; None when the defaults are unknown."""
    if defaults is None:
        return None
    now, then = params.flatten(current), params.flatten(defaults)
    return [{"param": k, "value": now.get(k, "(removed)"), "default": then.get(k, "(absent)")}
            for k in sorted(set(now) | set(then)) if now.get(k, "(removed)") != then.get(k, "(absent)")]


def generated_params():
    """The params.yaml of the commit that added it (as generated), or None without git history."""
    added = (tracking.git("log", "--diff-filter=A", "--format=%H", "--", str(paths.PARAMS)) or "").split()
    text = tracking.git("show", f"{added[-1]}:{paths.PARAMS}") if added else None
    return yaml.safe_load(text) if text else None


def energy_rows(run_data):
    """[{stage, energy_kwh, emissions_kg_co2eq, duration_s, method}] from the run's metrics and tags."""
    if run_data is None:
        return []
    m, t = run_data.metrics, run_data.tags
    return [{"stage": s, "energy_kwh": m[f"{s}/energy_kwh"], "emissions_kg_co2eq": m[f"{s}/emissions_kg_co2eq"],
             "duration_s": m[f"{s}/energy_duration_s"], "method": t.get(f"{s}.energy_method", "")}
            for s in STAGES_MEASURED if f"{s}/energy_kwh" in m]


def interval(value, low, high, unit="", digits=4):
    return f"{value:.{digits}f}{unit} (95% interval {low:.{digits}f}{unit} to {high:.{digits}f}{unit})"


def gate_verdict(gates):
    """The gate verdict in words."""
    failed = [g["gate"] for g in gates if not g["passed"]]
    if not failed:
        return f"passed: all {len(gates)} gates"
    return f"failed: {len(failed)} of {len(gates)} gates ({', '.join(failed)})"


def summary(info, tags, gates, outcome, robustness_r, train_m, optimize_m, analyze_m, energy, env):
    """The model card's summary as (field, value) pairs: what, on which data, from which code and environment,
    how good (with intervals) and the verdict."""
    s, metric = robustness_r["summary"], robustness_r["summary"]["metric"]
    clean = robustness_r["clean"]
    pairs = [
        ("task", f"{info['task']}: {info['num_classes']} classes ({', '.join(map(str, info['class_names']))})"),
        ("model", tags["model"]),
        ("data", f"{info['source']}, {info['image_size']}x{info['image_size']} px, splits {info['sizes']}"),
        ("data sha256", info["sha256"]),
        ("git commit", f"{tags.get('git_commit', 'none')} (uncommitted changes: {tags.get('git_dirty', 'unknown')})"),
        ("environment", f"Python {env['python_version']}, torch {env['torch_version']} ({env['torch_build']}), "
                        f"{env['platform']}; lock sha256 {env['lock_sha256']}, matches: {env['lock_matches']}"),
        # Four test scores of one model, each named by model and images: the whole split is what train and
        # optimize measured (the quality gate reads the deployable's); the subset is robustness' seeded choice.
        (f"test {metric}, fp32, whole test split ({info['sizes']['test']} images)", f"{train_m[f'test/{metric}']:.4f}"),
        (f"test {metric}, deployable {s['deployable']}, whole test split (the quality gate's figure)",
         f"{optimize_m[f'deployable/{metric}']:.4f}"),
        (f"test {metric}, fp32, robustness' seeded subset ({s['subset']} images)",
         interval(clean["fp32"][metric], clean["fp32"][f"{metric}_ci_low"], clean["fp32"][f"{metric}_ci_high"])),
        (f"test {metric}, deployable {s['deployable']}, robustness' seeded subset ({s['subset']} images)",
         interval(clean["deployable"][metric], clean["deployable"][f"{metric}_ci_low"],
                  clean["deployable"][f"{metric}_ci_high"])),
        ("deployable batch-1 latency", f"{optimize_m['deployable/p50_ms_batch_1']:.2f} ms p50, speedup "
         + interval(optimize_m["deployable/speedup_batch_1"], optimize_m["deployable/speedup_batch_1_ci_low"],
                    optimize_m["deployable/speedup_batch_1_ci_high"], "x", digits=2)
         + ("" if optimize_m.get("deployable/latency_reliable", 1) else " UNRELIABLE (a busy machine: see optimize)")),
        ("robustness score", f"{s['score']:.3f} ({s['level']}; PGD / clean at epsilon {s['declared_epsilon']}/255)"),
        ("explanations", f"Grad-CAM on {analyze_m['explain/images']} test images; {analyze_m['explain/flagged']} "
                         "flagged by the model-randomisation check (map unchanged with random weights)"),
        ("energy", f"{sum(r['energy_kwh'] for r in energy):.3g} kWh, "
                   f"{sum(r['emissions_kg_co2eq'] for r in energy):.3g} kg CO2eq over "
                   f"{', '.join(r['stage'] for r in energy)}; codecarbon: "
                   f"{' | '.join(dict.fromkeys(r['method'] for r in energy))}" if energy
         else "not measured (mlflow.enabled or mlflow.energy.enabled is false)"),
        ("gates", gate_verdict(gates)),
        ("registry", f"version {outcome['version']} of {outcome['model']}, champion: version "
                     f"{outcome['champion_version']}" if outcome["registered"] else
         f"not registered: {outcome['reason']}"),
    ]
    return pairs


def explain_rows(explained):
    """analyze's randomisation check per image (reports/analyze.json summary.explain)."""
    return [{"test image": index, "rank correlation, trained vs random weights":
             "none" if r["spearman"] is None else r["spearman"], "flagged": r["flagged"], "note": r["note"]}
            for index, r in zip(explained["test_images"], explained["rows"], strict=True)]


def page(title, card, changes, energy, gates, outcome, train_m, analyze_m, explained, optimize_r,
                  robustness_r):
    metric = robustness_r["summary"]["metric"]
    variants = report.variant_rows(optimize_r["variants"], metric, optimize_r["deployable"])
    s = robustness_r["summary"]
    verdict = "passed" if all(g["passed"] for g in gates) else "failed"
    gate_rows = [{k: v for k, v in g.items() if k != "passed"} for g in gates]  # the verdict says it in words
    return report.page(title, (
        f"<h2>Summary</h2>{report.pairs_table(card)}"
        f"<h3>Params that differ from the generated params.yaml</h3>"
        f"{report.rows_table(changes) if changes is not None else '<p>(unknown: no git history of params.yaml)</p>'}"
        f"<h2>Gates: <span class='{verdict[:4]}'>{verdict}</span></h2>{report.rows_table(gate_rows)}"
        f"<h2>Registry</h2>{report.pairs_table(outcome.items())}"
        f"<h2>Training</h2>{report.pairs_table(train_m.items())}"
        f"{report.image(paths.CURVES, 'training curves')}"
        f"<h3>Sample test predictions</h3>{report.image(paths.PREDICTIONS, 'predictions')}"
        f"<h2>Explanations: Grad-CAM and the model-randomisation check</h2>"
        f"<p>Columns: input, truth, prediction, Grad-CAM of the trained model, Grad-CAM of the same architecture "
        f"with random weights. A map whose rank correlation with its random-weights twin is high does not depend "
        f"on what the model learned (Adebayo et al., 2018): {analyze_m['explain/flagged']} of "
        f"{analyze_m['explain/images']} flagged (layer {html.escape(explained['layer'])}, threshold "
        f"{explained['max_rank_correlation']}).</p>{report.rows_table(explain_rows(explained))}"
        f"{report.image(paths.EXPLANATIONS, 'explanation maps')}"
        f"<h2>Analysis</h2>{report.pairs_table(analyze_m.items())}"
        f"<h2>Optimisation (deployable: {html.escape(optimize_r['deployable'])})</h2>{report.rows_table(variants)}"
        f"{report.image(paths.PARETO, 'latency vs quality')}"
        f"<h2>Robustness: score {s['score']:.3f} ({html.escape(s['level'])})</h2>"
        f"{report.image(paths.ROBUSTNESS_CURVE_PNG, 'robustness curve')}"
        f"<h2>Security findings</h2>{report.rows_table(robustness_r['security'])}"
        f"<h2>Energy (codecarbon, offline)</h2>{report.rows_table(energy)}"
        "<p>register's own energy is measured after this page is written: see its metrics in the MLflow run.</p>"
        f"<h2>Fairness</h2><p>{FAIRNESS}</p>"
        f"<h2>Environment</h2>{report.pairs_table(environment.summary().items())}"))


FAIRNESS = ("No fairness metric: the data carry no sensitive attributes (who or what each image shows) to compare "
            "groups by. Add them to the data before judging a model on people.")


# MLflow keeps a model version's description in a VARCHAR(5000) (mlflow/store/model_registry/dbmodels): a
# server on PostgreSQL refuses a longer one.
DESCRIPTION_LIMIT = 5000


def markdown(title, card, changes, energy, gates, analyze_m, explained, limit=DESCRIPTION_LIMIT):
    """The same content as Markdown, for the registered version's description (the registry shows it). Sections
    that would take it over `limit` characters are left out, and named: the run's report/markdown.md and
    report/model.html keep everything."""
    gate_rows = [{k: v for k, v in g.items() if k != "passed"} for g in gates]
    sections = [
        f"# {title}\n\n## Summary\n\n{report.markdown([{'field': k, 'value': v} for k, v in card])}",
        f"## Gates: {gate_verdict(gates)}\n\n{report.markdown(gate_rows)}",
        f"## Explanations: model-randomisation check\n\n{analyze_m['explain/flagged']} of "
        f"{analyze_m['explain/images']} Grad-CAM maps flagged.\n\n{report.markdown(explain_rows(explained))}",
        f"## Energy (codecarbon, offline)\n\n{report.markdown(energy)}",
        f"## Fairness\n\n{FAIRNESS}\n",
        "## Params that differ from the generated params.yaml\n\n"
        + (report.markdown(changes) if changes is not None else "(unknown: no git history of params.yaml)\n"),
    ]
    footer = "Images, curves and every table: the run's artifacts report/model.html and report/markdown.md.\n"
    kept, left = [], []
    for section in sections:
        size = sum(len(k) + 1 for k in kept) + len(section) + len(footer) + 200  # 200: the note on what was left
        (kept if size <= limit else left).append(section)
    note = f"Left out here for length: {', '.join(s.splitlines()[0].lstrip('# ') for s in left)}.\n\n" if left else ""
    return "\n".join(kept) + "\n" + note + footer
