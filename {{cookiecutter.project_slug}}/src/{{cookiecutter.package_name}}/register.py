"""register: gate the deployable model on params' thresholds, register it with aliases, write the model report.

    python -m {{ cookiecutter.package_name }}.register    # or: dvc repro register

Gates are read from the upstream metrics (nothing is re-measured here): the deployable's test quality and
batch-1 latency, the robustness score, the quality the optimised variant gave up against fp32, and security
findings at or above a severity. When every gate passes, the deployable file's sha256 is checked against the
one robustness recorded, the file is logged as an MLflow pyfunc model that validates its input (serving.py;
loads without pickle) and registered as a new version with alias `challenger`; `champion` moves to it when
`register.promote` says so. Each version is tagged with its run, git commit, DVC experiment, data hash,
artifact hash and the champion it was measured against. Registering the same run and file again reuses its version.

Reads params `register`, `mlflow` and the outputs of every earlier stage. Writes metrics/register.json and
reports/model.html (one self-contained page: curves, predictions, analysis, optimisation, robustness,
security, gates, registry outcome), and logs both into the pipeline's MLflow run.
"""

import html
import math
import sys
import time

import mlflow
import yaml
from mlflow.exceptions import MlflowException

from {{ cookiecutter.package_name }}.lib import (
    dataset,
    environment,
    files,
    names,
    params,
    paths,
    report,
    serving,
    stage,
    task,
    tracking,
)

# --- gates --------------------------------------------------------------------------------------------------

def gate_values(metric, deployable, optimize_metrics, robustness_metrics, block_severity):
    """What each gate looks at, from the upstream files. block_severity None: no security gate."""
    values = {"min_quality": deployable[metric], "max_latency_ms": deployable["p50_ms_batch_1"],
              "min_robustness_score": robustness_metrics["score"],
              "max_quality_drop": -optimize_metrics[f"deployable/{metric}_change"]}
    if block_severity is not None:
        blocking = names.SEVERITIES[names.SEVERITIES.index(block_severity):]
        values["max_blocking_findings"] = sum(robustness_metrics[f"security/severity_{s}"] for s in blocking)
    return values


def evaluate_gates(values, thresholds, unreliable=None):
    """[{gate, value, threshold, passed, verdict}]: `min_*` gates need value >= threshold, `max_*` value <=
    threshold. A gate in `unreliable` ({gate: reason}) is judged neither way: passed False, verdict
    'unreliable: <reason>', so a noisy measurement can neither let a model through nor reject it unnoticed."""
    out = []
    for gate, value in values.items():
        limit = thresholds[gate]
        if gate in (unreliable or {}):
            out.append({"gate": gate, "value": value, "threshold": limit, "passed": False,
                        "verdict": f"unreliable: {unreliable[gate]}"})
            continue
        passed = bool(value >= limit if gate.startswith("min_") else value <= limit)
        out.append({"gate": gate, "value": value, "threshold": limit, "passed": passed,
                    "verdict": "pass" if passed else "fail"})
    return out


def should_promote(policy, quality, champion_quality):
    """champion_quality None: no champion yet. A champion without a recorded quality is never 'beaten'."""
    if policy == "never":
        return False
    if policy == "always" or champion_quality is None:
        return True
    return not math.isnan(champion_quality) and quality > champion_quality


# --- registry -----------------------------------------------------------------------------------------------

def champion(client, name):
    """(version, quality) of the model's champion, or (None, None)."""
    try:
        v = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None, None
    return int(v.version), float(v.tags.get("quality", "nan"))


def register(client, name, run_id, sha, tags, log_model, policy, quality):
    """Create (or find, for the same run and file) the version; set challenger and maybe champion.
    Returns the registry outcome as a dict."""
    previous, previous_quality = champion(client, name)
    existing = [v for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
                if v.tags.get("artifact_sha256") == sha]
    if existing:
        version, created = int(existing[0].version), False
    else:
        tags = {**tags, "previous_champion": str(previous or "none")}
        version, created = int(mlflow.register_model(log_model(), name, tags=tags).version), True
    client.set_registered_model_alias(name, "challenger", version)
    promoted = previous != version and should_promote(policy, quality, previous_quality)
    if promoted:
        client.set_registered_model_alias(name, "champion", version)
        client.set_model_version_tag(name, version, "promoted_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        client.set_model_version_tag(name, version, "promoted_over", str(previous or "none"))
    return {"model": name, "version": version, "created": created, "promoted": promoted,
            "champion_version": champion(client, name)[0], "previous_champion": previous,
            "previous_champion_quality": previous_quality, "policy": policy}


def lock_tags(lock):
    """{'dvc.dep.<path>': md5} for every data / model dependency recorded in dvc.lock (code deps aside)."""
    return {f"dvc.dep.{d['path']}": d.get("md5", "") for stage in lock.get("stages", {}).values()
            for d in stage.get("deps", []) if not d["path"].startswith("src/")}


# --- the model report and model card -----------------------------------------------------------------------

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


def card_summary(info, tags, gates, outcome, robustness_r, optimize_m, analyze_m, energy, env):
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
        (f"test {metric}, fp32", interval(clean["fp32"][metric], clean["fp32"][f"{metric}_ci_low"],
                                          clean["fp32"][f"{metric}_ci_high"])
         + f" on robustness' seeded subset of {s['subset']} test images"),
        (f"test {metric}, deployable ({s['deployable']})",
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


def render_report(title, card, changes, energy, gates, outcome, train_m, analyze_m, explained, optimize_r,
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


def model_card(title, card, changes, energy, gates, analyze_m, explained, limit=DESCRIPTION_LIMIT):
    """The same content as Markdown, for the registered version's description (the registry shows it). Sections
    that would take it over `limit` characters are left out, and named: the run's report/model_card.md and
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
    footer = "Images, curves and every table: the run's artifacts report/model.html and report/model_card.md.\n"
    kept, left = [], []
    for section in sections:
        size = sum(len(k) + 1 for k in kept) + len(section) + len(footer) + 200  # 200: the note on what was left
        (kept if size <= limit else left).append(section)
    note = f"Left out here for length: {', '.join(s.splitlines()[0].lstrip('# ') for s in left)}.\n\n" if left else ""
    return "\n".join(kept) + "\n" + note + footer


# --- the stage ----------------------------------------------------------------------------------------------

def registry_outcome(run, rg, deploy, metric, passed, gates, recorded_sha):
    """Register the deployable when every gate passed and tracking is on; else say why not."""
    if not passed:
        failed = ", ".join(f"{g['gate']} ({g['value']:.4g} vs {g['threshold']}: {g['verdict']})" for g in gates
                           if not g["passed"])
        return {"registered": False, "reason": f"gates not passed: {failed}"}
    if run is None:
        return {"registered": False, "reason": "mlflow.enabled is false: no registry to register in"}
    deploy_path = paths.DEPLOY_DIR / deploy["file"]
    sha = files.sha256(deploy_path)
    if sha != recorded_sha:
        raise files.IntegrityError(f"{deploy_path}: sha256 {sha} differs from the {recorded_sha} robustness checked; "
                                   "the file changed after the checks. Rerun: dvc repro")
    run_tags = mlflow.get_run(run.info.run_id).data.tags
    example = dataset.to_float(dataset.load_split(paths.split("test"))[0][:2]).numpy()  # (2, 3, H, W) float32 in [0, 1]
    tags = {"run_id": run.info.run_id, "git_commit": run_tags.get("git_commit", "none"),
            "dvc_exp_name": run_tags.get("dvc_exp_name", tracking.NOT_AN_EXPERIMENT), "git_dirty": run_tags.get(
                "git_dirty", "unknown"),
            "data_sha256": run_tags.get("data_sha256", "none"), "artifact_sha256": sha,
            "lock_sha256": run_tags.get("lock_sha256", "none"),
            "variant": deploy["variant"], "metric": metric, "quality": repr(deploy[metric])}
    return {"registered": True, **register(
        mlflow.MlflowClient(), rg["model_name"], run.info.run_id, sha, tags,
        lambda: serving.log_model(paths.DEPLOY_DIR, example), rg["promote"], deploy[metric])}


def flat_metrics(passed, gates, outcome):
    metrics = {"passed": int(passed), "registered": int(outcome["registered"])}
    for g in gates:
        metrics[f"gate/{g['gate']}/passed"] = int(g["passed"])  # values and verdicts: reports/model.html
    metrics["gates_unreliable"] = sum(g["verdict"].startswith("unreliable") for g in gates)
    if outcome["registered"]:
        metrics.update(version=outcome["version"], promoted=int(outcome["promoted"]),
                       champion_version=outcome["champion_version"])
    return metrics


def write_report(p, run, deploy, gates, outcome, robustness_r):
    """reports/model.html, with the model card's summary on top; returns the card as Markdown, short enough for
    the registry and whole."""
    args = deploy["model_args"]
    title = f"Model report: {args['architecture']} ({run.info.run_id if run else 'untracked'})"
    run_data = mlflow.get_run(run.info.run_id).data if run else None
    energy = energy_rows(run_data)
    analyze_m = files.read_json(paths.metrics("analyze"))
    tags = {**(run_data.tags if run_data else tracking.context_tags()),
            "model": f"{args['architecture']}{'/' + args['encoder'] if args['encoder'] else ''}, deployable "
                     f"{deploy['variant']}"}
    card = card_summary(files.read_json(paths.DATASET), tags, gates, outcome, robustness_r,
                        files.read_json(paths.metrics("optimize")), analyze_m, energy, environment.summary())
    changes = params_changes(p, generated_params())
    explained = files.read_json(paths.ANALYZE_REPORT)["summary"]["explain"]
    page = render_report(title, card, changes, energy, gates, outcome, files.read_json(paths.metrics("train")),
                         analyze_m, explained, files.read_json(paths.OPTIMIZE_REPORT), robustness_r)
    with files.atomic_path(paths.MODEL_REPORT) as t:
        t.write_text(page)
    return (model_card(title, card, changes, energy, gates, analyze_m, explained),
            model_card(title, card, changes, energy, gates, analyze_m, explained, limit=float("inf")))


def main():
    p = stage.begin("register")
    rg = p["register"]
    deploy = files.read_json(paths.DEPLOY_INFO)
    metric = task.primary_metric(deploy["model_args"]["task"])
    robustness_r = files.read_json(paths.ROBUSTNESS_REPORT)
    values = gate_values(metric, deploy, files.read_json(paths.metrics("optimize")),
                         files.read_json(paths.metrics("robustness")), rg["gates"]["block_severity"])
    # Security: zero findings at or above block_severity are allowed.
    unreliable = {} if deploy.get("latency_reliable", True) else {"max_latency_ms": deploy["latency_reliability"]}
    gates = evaluate_gates(values, {**rg["gates"], "max_blocking_findings": 0}, unreliable)
    passed = all(g["passed"] for g in gates)
    with tracking.pipeline_run(p["mlflow"], "register") as run:
        outcome = registry_outcome(run, rg, deploy, metric, passed, gates,
                                   robustness_r["sha256"].get(str(paths.DEPLOY_DIR / deploy["file"])))
        metrics = flat_metrics(passed, gates, outcome)
        card_md, card_full = write_report(p, run, deploy, gates, outcome, robustness_r)
        files.write_json(paths.metrics("register"), metrics)
        if run:
            mlflow.log_metrics({f"register/{k}": v for k, v in metrics.items() if v is not None})
            mlflow.set_tag("registry_decision", "registered" if outcome["registered"] else "rejected")
            mlflow.log_text(card_full, "report/model_card.md")
            if outcome["registered"]:
                mlflow.set_tags({"registry_model": outcome["model"], "registry_version": str(outcome["version"])})
                mlflow.MlflowClient().update_model_version(outcome["model"], outcome["version"], description=card_md)
            mlflow.log_artifact(str(paths.MODEL_REPORT), "report")
            if paths.DVC_LOCK.is_file():  # the link back to DVC: which data and model versions made this run
                mlflow.set_tags(lock_tags(yaml.safe_load(paths.DVC_LOCK.read_text())))
                mlflow.log_artifact(str(paths.DVC_LOCK), "dvc")
    if outcome["registered"]:
        print(f"register: {outcome['model']} version {outcome['version']} "
              f"({'new' if outcome['created'] else 'already registered'}) @challenger; champion is version "
              f"{outcome['champion_version']} -> {paths.metrics('register')}, {paths.MODEL_REPORT}")
    else:
        print(f"register: not registered: {outcome['reason']} -> {paths.metrics('register')}, {paths.MODEL_REPORT}")
        if not passed and rg["fail_on_gate"]:  # outputs written and the run closed first: the decision stays reviewable
            sys.exit("register: gates failed and register.fail_on_gate is true (see metrics/register.json)")


if __name__ == "__main__":
    stage.run("register", main)
