"""robustness: the fp32 and the deployable model under adversarial attacks and corruptions; security checks.

    python -m {{ cookiecutter.package_name }}.robustness  # or: dvc repro robustness

Attacks are l-inf FGSM and PGD (random start) on [0, 1] pixels, epsilon given in 1/255 steps; the models
normalise inside, so the budget is in pixel space. The deployable model (int8 when optimize chose it) is
evaluated on the adversarial examples made against fp32 (transfer) and on the same corruptions. Every metric
comes from a fixed, seeded subset of the test split, with a bootstrap 95% interval for the primary metric.
Security checks are real checks with evidence; their summary counts findings by severity, no invented score.

Reads params `seed`, `robustness`, `mlflow`; writes metrics/robustness.json, reports/robustness.{json,html},
plots/robustness/{curve.json,curve.png}; logs the same into the pipeline's MLflow run.
"""

import functools
import html
import json

import mlflow
import numpy as np
import torch

from {{ cookiecutter.package_name }}.lib import (
    corruptions,
    dataset,
    files,
    models,
    params,
    paths,
    plots,
    report,
    runtime,
    security,
    stage,
    store,
    task,
    tracking,
)

# --- attacks ------------------------------------------------------------------------------------------------

def _grad(model, x, y, loss):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(model(x), y), x)
    return g


def fgsm(model, x, y, eps, loss):
    """One signed-gradient step of size eps; x (B, 3, H, W) in [0, 1]."""
    if eps == 0:
        return x.clone()
    return (x + eps * _grad(model, x, y, loss).sign()).clamp(0, 1)


def pgd(model, x, y, eps, loss, steps, step_size, generator):
    """`steps` signed-gradient steps of step_size * eps from a uniform random start, projected back into the
    eps-ball around x and into [0, 1] after each."""
    if eps == 0:
        return x.clone()
    adv = (x + (torch.rand(x.shape, generator=generator) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        adv = adv + step_size * eps * _grad(model, adv, y, loss).sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv


# --- evaluation with confidence intervals -------------------------------------------------------------------

def bootstrap_ci(stats, t, resamples, seed, level=0.95):
    """Percentile interval of the task's primary metric over image-level bootstrap resamples."""
    n = len(next(iter(stats.values())))
    idx = torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(seed))
    counts = torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(resamples, n,
                                                                                              dtype=torch.float64))
    values = [task.scores(t, {k: torch.tensordot(c, v.double(), dims=1) for k, v in stats.items()})[t.metric]
              for c in counts]
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def scores_with_interval(fn, x, y, t, batch_size, resamples, seed):
    """Scores of fn on float images x (N, 3, H, W) with a bootstrap interval for the primary metric."""
    stats = task.score_batches(fn, dataset.batches(x, y, batch_size), t)["stats"]
    out = task.scores(t, task.reduce(stats))
    out[f"{t.metric}_ci_low"], out[f"{t.metric}_ci_high"] = bootstrap_ci(stats, t, resamples, seed)
    return out


def level_of(score, thresholds):
    return "high" if score >= thresholds["high"] else "medium" if score >= thresholds["medium"] else "low"


# --- the stage ----------------------------------------------------------------------------------------------

def load_deployable():
    """The deployable variant as a callable on float (B, 3, H, W), and its description."""
    deploy = json.loads(paths.DEPLOY_INFO.read_text())
    return runtime.deployable(paths.DEPLOY_DIR / deploy["file"], deploy["runtime"], torch.get_num_threads()), deploy


def attack_rows(model, deployable, x, y, rp, ev, loss, generator, metric):
    """Adversarial rows (attack, epsilon, scores) and the curve of the primary metric against epsilon."""
    adversarial, curve, bs = [], [], rp["batch_size"]
    for eps_255 in rp["epsilons"]:
        eps = eps_255 / 255
        batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]
        x_fgsm = torch.cat([fgsm(model, xb, yb, eps, loss) for xb, yb in batches])
        x_pgd = torch.cat([pgd(model, xb, yb, eps, loss, rp["pgd"]["steps"], rp["pgd"]["step_size"], generator)
                           for xb, yb in batches])
        rows = {"fgsm": ev(model, x_fgsm), "pgd": ev(model, x_pgd), "pgd_transfer_deployable": ev(deployable, x_pgd)}
        adversarial += [{"attack": attack, "epsilon": eps_255, **r} for attack, r in rows.items()]
        curve.append({"epsilon": eps_255, **{a: r[metric] for a, r in rows.items()}})
    return adversarial, curve


def corruption_rows(nets, x, rp, ev, seed):
    """One row per model, corruption and severity; each corruption drawn from the same seed for every model."""
    rows = []
    for kind in rp["corruptions"]:
        for severity in rp["severities"]:
            xc = corruptions.corrupt(x, kind, severity, torch.Generator().manual_seed(seed))
            rows += [{"model": name, "corruption": kind, "severity": severity, **ev(fn, xc)}
                     for name, fn in nets.items()]
    return rows


def headline_metrics(metric, clean, score, deploy_score, level, corruption, summary_counts):
    """metrics/robustness.json: the headline figures; per-epsilon and per-corruption rows are in the report."""
    metrics = {f"clean/{metric}": clean["fp32"][metric], f"deployable/clean/{metric}": clean["deployable"][metric],
               "score": score, "deployable/score": deploy_score, "level": level,
               **{f"security/{k}": v for k, v in summary_counts.items()}}
    for model in ("fp32", "deployable"):  # the mean over every corruption and severity measured
        rows = [r[metric] for r in corruption if r["model"] == model]
        metrics[f"{model}/corrupted/{metric}"] = sum(rows) / len(rows)
    return metrics


def audit(p, run, deploy):
    """Security findings (security.audit) plus the sha256 of every model file, which register checks."""
    deploy_path = paths.DEPLOY_DIR / deploy["file"]
    artifacts = [paths.CHECKPOINT, *sorted(f for f in paths.DEPLOY_DIR.iterdir() if f.is_file())]
    values = {f"params.{k}": v for k, v in params.flatten(p).items()}
    if run:
        values.update({f"tag.{k}": v for k, v in mlflow.get_run(run.info.run_id).data.tags.items()})
    findings, _ = security.audit(
        model_files=[paths.CHECKPOINT, deploy_path], scan_dir=paths.CHECKPOINT.parent,
        model_uri=json.loads(paths.RUN_FILE.read_text()).get("model_uri"),
        tracking_uri=store.tracking_uri(p["mlflow"]["tracking_uri"], store.repo_root()), values=values,
        input_shape=models.checkpoint_info(paths.CHECKPOINT)["input_shape"])
    hashes = {str(a): files.sha256(a) for a in artifacts}
    findings.append(security.finding("sha256", "PASS", "info", json.dumps(hashes)))
    return findings, security.summarize(findings), hashes


def main():
    st = stage.begin("robustness")
    p, rp, seed = st.params, st.section, st.params["seed"]
    model, model_args = models.load_checkpoint(paths.CHECKPOINT)
    for w in model.parameters():
        w.requires_grad_(False)  # gradients flow to the input only
    t = task.Task.of(model_args)
    metric = t.metric
    deployable, deploy = load_deployable()
    images, targets = dataset.load_split(paths.split("test"))
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(images), generator=g)[:rp["subset"]]
    x, y = dataset.to_float(images[pick]), targets[pick]
    with tracking.pipeline_run(p["mlflow"], st.name) as run:
        def ev(fn, inputs):
            return scores_with_interval(fn, inputs, y, t, rp["batch_size"], rp["bootstrap_resamples"], seed)

        loss = functools.partial(task.cross_entropy, t=t)
        clean = {"fp32": ev(model, x), "deployable": ev(deployable, x)}
        adversarial, curve = attack_rows(model, deployable, x, y, rp, ev, loss, g, metric)
        corruption = corruption_rows({"fp32": model, "deployable": deployable}, x, rp, ev, seed)
        declared = next(r for r in curve if r["epsilon"] == rp["declared_epsilon"])
        score = declared["pgd"] / max(clean["fp32"][metric], 1e-12)
        deploy_score = declared["pgd_transfer_deployable"] / max(clean["deployable"][metric], 1e-12)
        findings, summary_counts, hashes = audit(p, run, deploy)
        metrics = headline_metrics(metric, clean, score, deploy_score, level_of(score, rp["levels"]), corruption,
                               summary_counts)
        rep = {"summary": {"metric": metric, "declared_epsilon": rp["declared_epsilon"], "score": score,
                           "level": metrics["level"], "deployable": deploy["variant"], "deployable_score": deploy_score,
                           "subset": len(x), "pgd": rp["pgd"], "bootstrap_resamples": rp["bootstrap_resamples"],
                           "corruptions": corruptions.SOURCE},
               "clean": clean, "adversarial": adversarial, "corruptions": corruption, "security": findings,
               "security_summary": summary_counts, "sha256": hashes}
        files.write_json(paths.ROBUSTNESS_REPORT, rep)
        with files.atomic_path(paths.ROBUSTNESS_HTML) as t:
            t.write_text(render_html(rep))
        files.write_json(paths.ROBUSTNESS_CURVE, curve)
        with files.atomic_path(paths.ROBUSTNESS_CURVE_PNG) as t:
            plots.attack_curve(curve, metric, t)
        st.publish(run, metrics, (paths.ROBUSTNESS_REPORT, paths.ROBUSTNESS_HTML, paths.ROBUSTNESS_CURVE_PNG),
                   {"robustness_level": metrics["level"], "artifact_sha256": hashes[str(paths.CHECKPOINT)]},
                   headline=("score", "security/fail"))
    print(f"robustness: score {score:.3f} ({metrics['level']}) at eps {rp['declared_epsilon']}/255; deployable "
          f"{deploy['variant']} {deploy_score:.3f}; security {summary_counts} -> {st.metrics_file}, "
          f"{paths.ROBUSTNESS_HTML}")


def render_html(rep):
    s = rep["summary"]
    return report.page("Robustness and security", (
        f"<p>score {s['score']:.3f} ({html.escape(s['level'])}) = PGD {html.escape(s['metric'])} at epsilon "
        f"{s['declared_epsilon']}/255 / clean; deployable ({html.escape(s['deployable'])}) transfer score "
        f"{s['deployable_score']:.3f}</p>"
        f"<h2>Adversarial</h2>{report.rows_table(rep['adversarial'])}"
        f"<h2>Corruptions</h2>{report.rows_table(rep['corruptions'])}"
        f"<h2>Security findings</h2>{report.rows_table(rep['security'])}"
        f"<p>{html.escape(str(rep['security_summary']))}</p>"))



if __name__ == "__main__":
    stage.run("robustness", main)
