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

import math
import sys
import time

import mlflow
import yaml
from mlflow.exceptions import MlflowException

from {{ cookiecutter.package_name }}.lib import (
    card,
    dataset,
    environment,
    files,
    names,
    paths,
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


# What DVC's tables show of register's figures (stage.Stage.publish).
HEADLINE = ("passed", "registered", "version", "champion_version")


def decision_metrics(passed, gates, outcome):
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
    energy = card.energy_rows(run_data)
    analyze_m = files.read_json(paths.metrics("analyze"))
    tags = {**(run_data.tags if run_data else tracking.context_tags()),
            "model": f"{args['architecture']}{'/' + args['encoder'] if args['encoder'] else ''}, deployable "
                     f"{deploy['variant']}"}
    train_m = files.read_json(paths.metrics("train"))
    pairs = card.summary(files.read_json(paths.DATASET), tags, gates, outcome, robustness_r, train_m,
                         files.read_json(paths.metrics("optimize")), analyze_m, energy, environment.summary())
    changes = card.params_changes(p, card.generated_params())
    explained = files.read_json(paths.ANALYZE_REPORT)["summary"]["explain"]
    page = card.page(title, pairs, changes, energy, gates, outcome, train_m,
                         analyze_m, explained, files.read_json(paths.OPTIMIZE_REPORT), robustness_r)
    with files.atomic_path(paths.MODEL_REPORT) as t:
        t.write_text(page)
    return (card.markdown(title, pairs, changes, energy, gates, analyze_m, explained),
            card.markdown(title, pairs, changes, energy, gates, analyze_m, explained, limit=float("inf")))


def main():
    st = stage.begin("register")
    p, rg = st.params, st.section
    deploy = files.read_json(paths.DEPLOY_INFO)
    metric = task.Task.of(deploy["model_args"]).metric
    robustness_r = files.read_json(paths.ROBUSTNESS_REPORT)
    values = gate_values(metric, deploy, files.read_json(paths.metrics("optimize")),
                         files.read_json(paths.metrics("robustness")), rg["gates"]["block_severity"])
    # Security: zero findings at or above block_severity are allowed.
    unreliable = {} if deploy.get("latency_reliable", True) else {"max_latency_ms": deploy["latency_reliability"]}
    gates = evaluate_gates(values, {**rg["gates"], "max_blocking_findings": 0}, unreliable)
    passed = all(g["passed"] for g in gates)
    with tracking.pipeline_run(p["mlflow"], st.name) as run:
        outcome = registry_outcome(run, rg, deploy, metric, passed, gates,
                                   robustness_r["sha256"].get(str(paths.DEPLOY_DIR / deploy["file"])))
        metrics = decision_metrics(passed, gates, outcome)
        card_md, card_full = write_report(p, run, deploy, gates, outcome, robustness_r)
        st.publish(run, metrics, [(paths.MODEL_REPORT, "report")],
                   {"registry_decision": "registered" if outcome["registered"] else "rejected"},
                   headline=[k for k in HEADLINE if k in metrics])  # version: only when registered
        if run:
            mlflow.log_text(card_full, "report/model_card.md")
            if outcome["registered"]:
                mlflow.set_tags({"registry_model": outcome["model"], "registry_version": str(outcome["version"])})
                mlflow.MlflowClient().update_model_version(outcome["model"], outcome["version"], description=card_md)
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
