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
import io
import json
import os
import re
import signal
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

import matplotlib
import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

from {{ cookiecutter.package_name }} import data, files, models, params, report, tracking
from {{ cookiecutter.package_name }}.optimize import ort_session
from {{ cookiecutter.package_name }}.train import batch_stats, primary_metric, scores

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CHECKPOINT = Path("models/model.safetensors")
DEPLOY_DIR = Path("models/deployable")
PREPARED = Path("data/prepared")
RUN_FILE = Path("metrics/mlflow.json")
METRICS = "metrics/robustness.json"
REPORT = "reports/robustness.json"
HTML = "reports/robustness.html"
CURVE = "plots/robustness/curve.json"
CURVE_PNG = "plots/robustness/curve.png"

# Installed versions below these floors are vulnerable (the CVEs named); read from the environment.
CVE_FLOORS = {
    "torch": ("2.10", "CVE-2025-32434, CVE-2026-24747: code execution through torch.load(weights_only=True)"),
    "mlflow": ("3.11", "CVE-2026-2652, CVE-2026-0545: tracking-server vulnerabilities in mlflow <= 3.10.1"),
}
SECRET_KEY = re.compile(r"pass(word)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential", re.I)
SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36}|xox[abpr]-[A-Za-z0-9-]{10,}|"
                          r"-----BEGIN [A-Z ]*PRIVATE KEY-----|sk-[A-Za-z0-9]{32,}|://[^/\s:@]+:[^/\s@]+@")


# --- attacks and corruptions --------------------------------------------------------------------------------

def attack_loss(logits, y, task, num_classes):
    if task == "segmentation" and num_classes == 2:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float())
    return F.cross_entropy(logits, y)


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


def _jpeg(img, quality):  # (3, H, W) in [0, 1] -> the same after a JPEG round trip
    buf = io.BytesIO()
    Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(buf, format="JPEG", quality=quality)
    return torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()).permute(2, 0, 1).float() / 255


def corrupt(x, kind, severity, generator):
    """Common corruptions at severity 1..3 on x (B, 3, H, W) in [0, 1]."""
    s = severity - 1
    if kind == "gaussian_noise":
        return (x + torch.randn(x.shape, generator=generator) * (0.04, 0.08, 0.12)[s]).clamp(0, 1)
    if kind == "blur":
        return gaussian_blur(x, kernel_size=[5, 5], sigma=[(0.6, 1.0, 1.5)[s]] * 2)
    if kind == "brightness":
        return (x + (0.1, 0.2, 0.3)[s]).clamp(0, 1)
    if kind == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * (0.7, 0.5, 0.3)[s] + mean).clamp(0, 1)
    if kind == "jpeg":
        return torch.stack([_jpeg(img, (60, 30, 10)[s]) for img in x])
    raise ValueError(f"robustness.corruptions: unknown corruption {kind!r}; valid: gaussian_noise, blur, "
                     "brightness, contrast, jpeg")


# --- evaluation with confidence intervals -------------------------------------------------------------------

def per_image_stats(fn, x, y, task, num_classes, batch_size):
    """batch_stats of every image, stacked: {key: (N, ...)}, so totals and bootstrap resamples are sums."""
    rows = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            logits = fn(x[i:i + batch_size]).float()
            rows += [batch_stats(logits[j:j + 1], y[i + j:i + j + 1], task, num_classes) for j in range(len(logits))]
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def bootstrap_ci(stats, task, metric, resamples, seed, level=0.95):
    """Percentile interval of `metric` over image-level bootstrap resamples."""
    n = len(next(iter(stats.values())))
    idx = torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(seed))
    counts = torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(resamples, n,
                                                                                              dtype=torch.float64))
    values = [scores(task, {k: torch.tensordot(c, v.double(), dims=1) for k, v in stats.items()})[metric]
              for c in counts]
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def evaluate(fn, x, y, task, num_classes, batch_size, resamples, seed):
    stats = per_image_stats(fn, x, y, task, num_classes, batch_size)
    metric = primary_metric(task)
    out = scores(task, {k: v.sum(0) for k, v in stats.items()})
    out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = bootstrap_ci(stats, task, metric, resamples, seed)
    return out


def level_of(score, thresholds):
    return "high" if score >= thresholds["high"] else "medium" if score >= thresholds["medium"] else "low"


# --- security checks ----------------------------------------------------------------------------------------

def finding(check, status, severity, evidence, mitigation=""):
    return {"check": check, "status": status, "severity": severity, "evidence": evidence, "mitigation": mitigation}


def is_safetensors(path):
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    try:
        return 0 < n < len(raw) and isinstance(json.loads(raw[8:8 + n]), dict)
    except ValueError:
        return False


def check_formats(paths, model_uri):
    out = []
    for p in paths:
        suffix = Path(p).suffix
        if suffix == ".safetensors" and is_safetensors(p):
            out.append(finding("no-pickle-format", "PASS", "info", f"{p}: safetensors (tensors + JSON header only)"))
        elif suffix == ".onnx":
            import onnx

            onnx.checker.check_model(onnx.load(str(p)))
            out.append(finding("no-pickle-format", "PASS", "info", f"{p}: ONNX protobuf, checker passed"))
        else:
            try:
                torch.load(p, weights_only=True)
                out.append(finding("no-pickle-format", "WARN", "low", f"{p}: pickle, loads with weights_only=True",
                                   "convert to safetensors"))
            except Exception as e:
                out.append(finding("no-pickle-format", "FAIL", "high", f"{p}: refuses weights_only=True load ({e})",
                                   "never load it with weights_only=False; re-export as safetensors"))
    if model_uri:
        previous = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
        os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
        try:
            mlflow.pyfunc.load_model(model_uri)
            out.append(finding("no-pickle-format", "PASS", "info",
                               f"{model_uri} loads with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false"))
        except Exception as e:
            out.append(finding("no-pickle-format", "FAIL", "high", f"{model_uri} needs pickle to load: {e}",
                               "log the model with serialization_format='pt2'"))
        finally:
            if previous is None:
                os.environ.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
            else:
                os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = previous
    return out


def check_scan(folder):
    """picklescan over every file under `folder`: pickles (also inside torch.save zips) importing anything
    that can run code. Its per-file report goes into the evidence."""
    from picklescan.scanner import scan_file_path

    scans, infected = {}, {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        r = scan_file_path(str(path))
        flagged = sorted({f"{g.module}.{g.name}" for g in r.globals if g.safety.value != "innocuous"})
        scans[str(path)] = {"issues": r.issues_count, "flagged_globals": flagged, "scan_error": r.scan_err}
        if r.issues_count or flagged:
            infected[str(path)] = flagged
    if infected:
        return [finding("pickle-scan", "FAIL", "critical", f"picklescan: {json.dumps(infected)}",
                        "delete these files; never load them")]
    return [finding("pickle-scan", "PASS", "info", f"picklescan: {json.dumps(scans)}")]


def version_tuple(v):
    return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3])


def check_versions(installed=None):
    out = []
    for package, (floor, cves) in CVE_FLOORS.items():
        v = (installed or {}).get(package) or metadata.version(package)
        ok = version_tuple(v) >= version_tuple(floor)
        out.append(finding("cve-floor", "PASS" if ok else "FAIL", "info" if ok else "high",
                           f"{package} {v} {'>=' if ok else '<'} {floor} ({cves})",
                           "" if ok else f"pip install -U '{package}>={floor}'"))
    return out


def check_tracking(uri, env=os.environ):
    u = urlparse(uri)
    local = u.hostname in (None, "localhost", "127.0.0.1", "::1")
    creds = env.get("MLFLOW_TRACKING_TOKEN") or env.get("MLFLOW_TRACKING_USERNAME") or u.password
    if u.scheme == "http" and not local and not creds:
        return [finding("tracking-config", "WARN", "medium", f"{u.scheme}://{u.hostname}: plain HTTP to a remote "
                        "host without credentials", "serve MLflow behind TLS and basic-auth (mlflow server "
                        "--app-name basic-auth); pass MLFLOW_TRACKING_USERNAME / PASSWORD in the environment")]
    where = f"{u.scheme}://{u.hostname}" if u.hostname else u.scheme
    return [finding("tracking-config", "PASS", "info", f"{where}: local, encrypted or authenticated")]


def check_secrets(values):
    """values: {name: value} from params and run tags."""
    hits = [k for k, v in values.items()
            if (SECRET_KEY.search(k) and v not in (None, "", False)) or SECRET_VALUE.search(str(v))]
    if hits:
        return [finding("secrets", "FAIL", "high", f"secret-looking keys or values: {hits}",
                        "remove them; pass credentials through environment variables")]
    return [finding("secrets", "PASS", "info", f"{len(values)} params and tags checked against key and value patterns")]


def check_input_validation(input_shape):
    c, h, w = input_shape
    bad = {"wrong shape": torch.rand(1, c, h + 1, w), "wrong dtype": torch.rand(1, c, h, w).double(),
           "out of range": torch.rand(1, c, h, w) * 255, "NaN": torch.full((1, c, h, w), float("nan"))}
    accepted = []
    for name, x in bad.items():
        try:
            models.validate_input(x, input_shape)
            accepted.append(name)
        except ValueError:
            pass
    models.validate_input(torch.rand(2, c, h, w), input_shape)  # and a good input passes
    if accepted:
        return [finding("input-validation", "FAIL", "medium", f"accepted: {accepted}",
                        "models.validate_input must reject them")]
    return [finding("input-validation", "PASS", "info", f"rejected {', '.join(bad)}; accepted a valid batch")]


# --- report -------------------------------------------------------------------------------------------------

def plot_curve(rows, metric, path):
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in [k for k in rows[0] if k != "epsilon"]:
        ax.plot([r["epsilon"] for r in rows], [r[key] for r in rows], marker="o", label=key)
    ax.set(xlabel="epsilon (x 1/255, l-inf)", ylabel=metric, title=f"{metric} under attack")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


def main():
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # end the MLflow run KILLED, not RUNNING
    p = params.load()
    files.require("robustness")
    rp = p["robustness"]
    model, model_args = models.load_checkpoint(CHECKPOINT)
    for w in model.parameters():
        w.requires_grad_(False)  # gradients flow to the input only
    task, num_classes = model_args["task"], model_args["num_classes"]
    metric = primary_metric(task)
    deploy = json.loads((DEPLOY_DIR / "deployable.json").read_text())
    deploy_path = DEPLOY_DIR / deploy["file"]
    deployable = (ort_session(deploy_path, torch.get_num_threads()) if deploy["runtime"] == "onnxruntime"
                  else models.load_checkpoint(deploy_path)[0])
    images, targets = data.load_split(PREPARED / "test.npz")
    g = torch.Generator().manual_seed(p["seed"])
    pick = torch.randperm(len(images), generator=g)[:rp["subset"]]
    x, y = data.to_float(images[pick]), targets[pick]
    ref = json.loads(RUN_FILE.read_text())  # also names the logged model, for the no-pickle check
    uri = tracking.tracking_uri(p["mlflow"]["tracking_uri"], tracking.repo_root())
    with tracking.closing(lambda: tracking.resume(p["mlflow"], RUN_FILE)) as run:
        bs, boot, seed = rp["batch_size"], rp["bootstrap_resamples"], p["seed"]

        def ev(fn, inputs):
            return evaluate(fn, inputs, y, task, num_classes, bs, boot, seed)

        loss = functools.partial(attack_loss, task=task, num_classes=num_classes)
        clean = {"fp32": ev(model, x), "deployable": ev(deployable, x)}
        adversarial, curve = [], []
        for eps_255 in rp["epsilons"]:
            eps = eps_255 / 255
            batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]
            x_fgsm = torch.cat([fgsm(model, xb, yb, eps, loss) for xb, yb in batches])
            x_pgd = torch.cat([pgd(model, xb, yb, eps, loss, rp["pgd"]["steps"], rp["pgd"]["step_size"], g)
                               for xb, yb in batches])
            rows = {"fgsm": ev(model, x_fgsm), "pgd": ev(model, x_pgd),
                    "pgd_transfer_deployable": ev(deployable, x_pgd)}
            for attack, r in rows.items():
                adversarial.append({"attack": attack, "epsilon": eps_255, **r})
            curve.append({"epsilon": eps_255, **{a: r[metric] for a, r in rows.items()}})
        corruptions = []
        for kind in rp["corruptions"]:
            for severity in rp["severities"]:
                xc = corrupt(x, kind, severity, torch.Generator().manual_seed(seed))
                for name, fn in (("fp32", model), ("deployable", deployable)):
                    corruptions.append({"model": name, "corruption": kind, "severity": severity, **ev(fn, xc)})

        declared = next(r for r in curve if r["epsilon"] == rp["declared_epsilon"])
        score = declared["pgd"] / max(clean["fp32"][metric], 1e-12)
        deploy_score = declared["pgd_transfer_deployable"] / max(clean["deployable"][metric], 1e-12)

        model_files = [CHECKPOINT, deploy_path]
        artifacts = [CHECKPOINT, *sorted(p for p in DEPLOY_DIR.iterdir() if p.is_file())]
        flat_params = {f"params.{k}": v for k, v in params.flatten(p).items()}
        tags = {f"tag.{k}": v for k, v in mlflow.get_run(run.info.run_id).data.tags.items()} if run else {}
        security = [*check_formats(model_files, ref.get("model_uri")), *check_scan(CHECKPOINT.parent),
                    *check_versions(), *check_tracking(uri), *check_secrets({**flat_params, **tags}),
                    *check_input_validation(models.checkpoint_info(CHECKPOINT)["input_shape"])]
        hashes = {str(a): files.sha256(a) for a in artifacts}
        security.append(finding("sha256", "PASS", "info", json.dumps(hashes)))
        summary_counts = {f"{status.lower()}": sum(f["status"] == status for f in security)
                          for status in ("PASS", "WARN", "FAIL")}
        summary_counts.update({f"severity_{sev}": sum(f["severity"] == sev and f["status"] != "PASS" for f in security)
                               for sev in params.SEVERITIES})

        metrics = {f"clean/{metric}": clean["fp32"][metric], f"deployable/clean/{metric}": clean["deployable"][metric],
                   "score": score, "deployable/score": deploy_score, "level": level_of(score, rp["levels"]),
                   **{f"security/{k}": v for k, v in summary_counts.items()}}
        for r in curve:
            metrics.update({f"{a}/eps{r['epsilon']}/{metric}": v for a, v in r.items() if a != "epsilon"})
        for r in corruptions:
            metrics[f"{r['model']}/{r['corruption']}/s{r['severity']}/{metric}"] = r[metric]
        rep = {"summary": {"metric": metric, "declared_epsilon": rp["declared_epsilon"], "score": score,
                              "level": metrics["level"], "deployable": deploy["variant"],
                              "deployable_score": deploy_score,
                              "subset": len(x), "pgd": rp["pgd"], "bootstrap_resamples": boot},
                  "clean": clean, "adversarial": adversarial, "corruptions": corruptions, "security": security,
                  "security_summary": summary_counts, "sha256": hashes}

        files.write_json(REPORT, rep)
        with files.atomic_path(HTML) as t:
            t.write_text(render_html(rep))
        files.write_json(CURVE, curve)
        with files.atomic_path(CURVE_PNG) as t:
            plot_curve(curve, metric, t)
        files.write_json(METRICS, metrics)
        if run:
            mlflow.log_metrics({f"robustness/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            mlflow.set_tags({"robustness_level": metrics["level"], "artifact_sha256": hashes[str(CHECKPOINT)]})
            for path in (REPORT, HTML, CURVE_PNG):
                mlflow.log_artifact(path, "robustness")
    print(f"robustness: score {score:.3f} ({metrics['level']}) at eps {rp['declared_epsilon']}/255; deployable "
          f"{deploy['variant']} {deploy_score:.3f}; security {summary_counts} -> {METRICS}, {HTML}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, ConnectionError, FileNotFoundError) as e:
        sys.exit(f"robustness: {type(e).__name__}: {e}")
