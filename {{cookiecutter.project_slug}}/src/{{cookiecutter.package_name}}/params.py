"""Read params.yaml once and check what the stages rely on, with errors that name the key and the fix."""

from pathlib import Path

import yaml

TASKS = ("segmentation", "classification")


class ParamsError(ValueError):
    pass


def _check(cond, key, value, rule):
    if not cond:
        raise ParamsError(f"params.yaml: {key}={value!r}: {rule}")


def load(path="params.yaml"):
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run the stage from the project root (where dvc.yaml is)")
    p = yaml.safe_load(path.read_text()) or {}
    for section in ("seed", "lr", "prepare", "train", "analyze", "optimize", "robustness", "mlflow"):
        _check(section in p, section, None, "missing; restore it from the template's params.yaml")
    _check(isinstance(p["seed"], int), "seed", p["seed"], "must be an integer")
    _check(isinstance(p["lr"], (int, float)) and p["lr"] > 0, "lr", p["lr"], "must be a positive number")
    pr, tr = p["prepare"], p["train"]
    _check(pr.get("task") in TASKS, "prepare.task", pr.get("task"), f"must be one of {', '.join(TASKS)}")
    _check(pr.get("source") in ("synthetic", "folder"), "prepare.source", pr.get("source"),
           "must be 'synthetic' or 'folder' (images under prepare.raw_dir)")
    _check(isinstance(pr.get("image_size"), int) and pr["image_size"] >= 16, "prepare.image_size",
           pr.get("image_size"), "must be an integer >= 16 (a multiple of 32 suits every architecture)")
    _check(isinstance(pr.get("num_classes"), int) and pr["num_classes"] >= 2, "prepare.num_classes",
           pr.get("num_classes"), "must be an integer >= 2 (2 = binary segmentation)")
    for key in ("val_fraction", "test_fraction"):
        _check(isinstance(pr.get(key), (int, float)) and 0 < pr[key] < 0.5, f"prepare.{key}", pr.get(key),
               "must be a number in (0, 0.5)")
    for key in ("epochs", "batch_size"):
        _check(isinstance(tr.get(key), int) and tr[key] >= 1, f"train.{key}", tr.get(key),
               "must be an integer >= 1")
    for key in ("batch_size", "runs"):
        _check(isinstance(p["analyze"].get(key), int) and p["analyze"][key] >= 1, f"analyze.{key}",
               p["analyze"].get(key), "must be an integer >= 1")
    _check(isinstance(p["analyze"].get("warmup"), int) and p["analyze"]["warmup"] >= 0, "analyze.warmup",
           p["analyze"].get("warmup"), "must be an integer >= 0")
    op = p["optimize"]
    _check(0 <= op["pruning"].get("amount", -1) < 1, "optimize.pruning.amount", op["pruning"].get("amount"),
           "must be a fraction in [0, 1)")
    _check(0 < op["select"].get("min_quality_ratio", 0) <= 1, "optimize.select.min_quality_ratio",
           op["select"].get("min_quality_ratio"), "must be in (0, 1]; 0.99 is MLPerf's closed-division rule")
    for key in ("batch_size", "runs"):
        _check(isinstance(op["latency"].get(key), int) and op["latency"][key] >= 1, f"optimize.latency.{key}",
               op["latency"].get(key), "must be an integer >= 1")
    rp = p["robustness"]
    _check(rp.get("declared_epsilon") in rp.get("epsilons", []), "robustness.declared_epsilon",
           rp.get("declared_epsilon"), f"must be one of robustness.epsilons {rp.get('epsilons')}")
    _check(set(rp.get("severities", [])) <= {1, 2, 3} and rp.get("severities"), "robustness.severities",
           rp.get("severities"), "must be a non-empty list from 1, 2, 3")
    _check(0 <= rp["levels"].get("medium", -1) <= rp["levels"].get("high", -1) <= 1, "robustness.levels",
           rp["levels"], "need 0 <= medium <= high <= 1")
    return p


def flatten(d, prefix=""):
    """{'train': {'model': {'encoder': 'x'}}} -> {'train.model.encoder': 'x'}"""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
