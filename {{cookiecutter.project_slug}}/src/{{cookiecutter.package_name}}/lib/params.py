"""Read params.yaml once and check all of it against a schema before any work starts.

Every problem is reported at once, each naming the key and the fix; an unknown or misspelt key is an error
with a did-you-mean (DVC's `-S` would otherwise let a typo such as `train.epoch=30` pass unnoticed).

    >>> validate({"seed": 1.5}, {"seed": integer()})
    ['seed=1.5: must be an integer']
"""

import difflib
import math
import re
from pathlib import Path

import yaml

from {{ cookiecutter.package_name }}.lib import names


class ParamsError(ValueError):
    pass


# --- value rules: each returns None when the value is fine, else what it must be ---------------------------

def integer(lo=None):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
            return "must be an integer" + (f" >= {lo}" if lo is not None else "")
    return check


def number(lo=None, hi=None, lo_open=False, hi_open=False):
    def check(v):
        bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)  # NaN, .inf
        bad = bad or (lo is not None and (v <= lo if lo_open else v < lo))
        bad = bad or (hi is not None and (v >= hi if hi_open else v > hi))
        if bad:
            lower = f"{'(' if lo_open else '['}{lo}" if lo is not None else "(-inf"
            upper = f"{hi}{')' if hi_open else ']'}" if hi is not None else "inf)"
            return f"must be a number in {lower}, {upper}"
    return check


def boolean(v):
    if not isinstance(v, bool):
        return "must be true or false"


def string(v):
    if not isinstance(v, str) or not v.strip():
        return "must be a non-empty string"


def choice(*values):
    def check(v):
        if v not in values:
            return f"must be one of {', '.join(map(str, values))}"
    return check


def model_name(v):
    if string(v) or any(c in v for c in "/:@"):
        return "must be a non-empty name without / : @ (models:/<name>@<alias> URIs use them)"


def store_uri(v):
    if string(v) or not v.startswith(names.TRACKING_SCHEMES):
        return f"must start with one of {', '.join(names.TRACKING_SCHEMES)} (default: sqlite:///mlflow.db, embedded)"
    if re.search(names.URI_PASSWORD, v) or re.search(names.URI_SECRET_QUERY, v):
        return ("must not carry a password (it would be committed to git and logged as an MLflow param); remove it "
                "and give it in the environment: MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or "
                "MLFLOW_TRACKING_TOKEN) for a server, PGPASSWORD or ~/.pgpass for PostgreSQL")


def country(v):
    if not isinstance(v, str) or not re.fullmatch(r"[A-Z]{3}", v):
        return ("must be a three-letter ISO 3166-1 alpha-3 country code in capitals (USA, FRA, DEU, GBR, IND, ...): "
                "codecarbon's carbon intensity of that country's grid")


def shown(v):
    """A value as an error message may show it: credentials in a URI masked."""
    if isinstance(v, str):
        v = re.sub(names.URI_SECRET_QUERY, r"\1***", re.sub(names.URI_PASSWORD, r"\1:***@", v))
    return repr(v)


def or_auto(rule):
    def check(v):
        if v != "auto" and (problem := rule(v)):
            return f"{problem}, or auto"
    return check


def nullable(rule):
    def check(v):
        if v is not None and (problem := rule(v)):
            return f"{problem}, or null"
    return check


def pair(rule):
    def check(v):
        if not isinstance(v, list) or len(v) != 2 or any(rule(x) for x in v) or not v[0] < v[1]:
            return "must be a list [low, high] of two numbers with low < high"
    return check


def list_of(rule):
    def check(v):
        if not isinstance(v, list) or not v:
            return "must be a non-empty list"
        for x in v:
            if problem := rule(x):
                return f"item {x!r} {problem}"
    return check


# Keys ending in "?" may be left out.
SCHEMA = {
    "seed": integer(0),
    "lr": number(0, lo_open=True),
    "prepare": {
        "task": choice(*names.TASKS), "source": choice("synthetic", "folder"), "raw_dir": string,
        "image_size": integer(16), "num_classes": or_auto(integer(2)), "synthetic_images": integer(10),
        "resize": choice("pad", "crop", "stretch"), "window": nullable(pair(number())),
        "workers": nullable(integer(1)),
        "max_image_pixels": integer(1),
        "val_fraction": number(0, 0.5, lo_open=True, hi_open=True),
        "test_fraction": number(0, 0.5, lo_open=True, hi_open=True),
    },
    "train": {
        "model": {"architecture": string, "encoder": nullable(string), "pretrained": boolean},
        "epochs": integer(1), "batch_size": integer(1),
        "loss": choice(*dict.fromkeys(n for losses in names.LOSSES.values() for n in losses)),
        "label_smoothing?": number(0, 1, hi_open=True),
        # Every key any optimizer takes; cross_checks() keeps each optimizer to its own (names.OPTIMIZERS).
        "optimizer": {"name": choice(*names.OPTIMIZERS), "weight_decay?": number(0), "momentum?": number(0, 1),
                      "dampening?": number(0, 1), "nesterov?": boolean, "betas?": list_of(number(0, 1, hi_open=True)),
                      "eps?": number(0, lo_open=True), "amsgrad?": boolean},
        "scheduler": {"name": choice(*names.SCHEDULERS),
                      "plateau": {"factor": number(0, 1, lo_open=True, hi_open=True), "patience": integer(0)},
                      "step": {"step_size": integer(1), "gamma": number(0, 1, lo_open=True)}},
        "early_stopping_patience": integer(0),
        "grad_clip_norm": nullable(number(0, lo_open=True)), "amp": boolean, "device": string,
        "num_workers": integer(0), "threads": nullable(integer(1)),
        "augment": {"hflip": boolean, "vflip": boolean, "rot90": boolean, "brightness": number(0, 1),
                    "contrast": number(0, 1), "saturation": number(0, 1), "hue": number(0, 0.5),
                    "crop_scale": nullable(pair(number(0, 1, lo_open=True)))},
    },
    "analyze": {"batch_size": integer(1), "warmup": integer(0), "runs": integer(3), "threads": nullable(integer(1)),
                "max_p90_p50": number(1),
                "explain": {"images": integer(1), "max_rank_correlation": number(-1, 1)}},
    "optimize": {
        "quantization": {"enabled": boolean, "calibration_images": integer(1), "calibration_batch_size": integer(1)},
        "pruning": {"enabled": boolean, "amount": number(0, 1, hi_open=True)},
        "latency": {"batch_size": integer(1), "warmup": integer(0), "runs": integer(3), "remeasure": integer(0),
                    "reliability": {"max_p90_p50": number(1), "max_interval_width": number(0, lo_open=True)}},
        "select": {"min_quality_ratio": number(0, 1, lo_open=True)},
    },
    "robustness": {
        "subset": integer(1), "batch_size": integer(1), "epsilons": list_of(number(0)), "declared_epsilon": number(0),
        "pgd": {"steps": integer(1), "step_size": number(0, 1, lo_open=True)},
        "corruptions": list_of(choice(*names.CORRUPTIONS)),
        "severities": list_of(choice(*names.CORRUPTION_SEVERITIES)),
        "bootstrap_resamples": integer(10), "levels": {"high": number(0, 1), "medium": number(0, 1)},
    },
    "register": {
        "model_name": model_name,
        "gates": {"min_quality": number(), "max_latency_ms": number(), "min_robustness_score": number(),
                  "max_quality_drop": number(), "block_severity": nullable(choice(*names.SEVERITIES))},
        "promote": choice(*names.PROMOTE), "fail_on_gate": boolean,
    },
    "predict": {
        "drift": {"alpha": number(0, 1, lo_open=True, hi_open=True), "min_effect": number(0, 1)},
    },
    "challenge": {"top_k": integer(1), "warmup": integer(0), "rounds": integer(3)},
    "mlflow": {"enabled": boolean, "tracking_uri": store_uri, "experiment": string, "system_metrics": boolean,
               "run_name": nullable(string), "timeout_s": number(1),
               "energy": {"enabled": boolean, "country": country}},
}


def validate(p, schema=SCHEMA, prefix=""):
    """Every problem in `p` against `schema`, as 'key=value: rule' lines (empty: valid)."""
    if not isinstance(p, dict):
        return [f"{prefix.rstrip('.') or 'params.yaml'}: must be a mapping of keys, not {p!r}"]
    errors = []
    known = {k.rstrip("?"): k for k in schema}
    for key in p:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"known keys here: {', '.join(known)}"
            errors.append(f"{prefix}{key}: unknown key; {hint}")
    for key, spec in known.items():
        rule = schema[spec]
        if key not in p:
            if not spec.endswith("?"):
                errors.append(f"{prefix}{key}: missing; add it back (see the template's params.yaml)")
        elif isinstance(rule, dict):
            errors += validate(p[key], rule, f"{prefix}{key}.")
        elif problem := rule(p[key]):
            errors.append(f"{prefix}{key}={shown(p[key])}: {problem}")
    return errors


def cross_checks(p):
    """Rules that tie keys together (only run on a schema-valid file)."""
    errors = []
    rp = p["robustness"]
    if rp["declared_epsilon"] not in rp["epsilons"]:
        errors.append(f"robustness.declared_epsilon={rp['declared_epsilon']!r}: must be one of robustness.epsilons "
                      f"{rp['epsilons']}")
    if rp["levels"]["medium"] > rp["levels"]["high"]:
        errors.append(f"robustness.levels={rp['levels']}: need medium <= high")
    return errors + train_checks(p["prepare"]["task"], p["train"])


def train_checks(task, cfg):
    """The names train.* gives, against the one list of each in names.py."""
    errors = []
    losses = names.LOSSES[task]
    if cfg["loss"] not in losses:
        errors.append(f"train.loss={cfg['loss']!r}: valid {task} losses: {', '.join(losses)}")
    arch, encoder = cfg["model"]["architecture"], cfg["model"]["encoder"]
    valid = names.SEGMENTATION_ARCHITECTURES if task == "segmentation" else names.CLASSIFICATION_ARCHITECTURES
    if arch not in valid:
        errors.append(f"train.model.architecture={arch!r}: valid {task} architectures: {', '.join(valid)}")
    if task == "segmentation" and encoder not in names.ENCODERS:
        errors.append(f"train.model.encoder={encoder!r}: valid encoders: {', '.join(names.ENCODERS)}")
    optimizer = cfg["optimizer"]["name"]
    allowed = names.OPTIMIZERS[optimizer][1]
    for key in sorted(set(cfg["optimizer"]) - {"name", *allowed}):
        takers = [n for n, (_, keys) in names.OPTIMIZERS.items() if key in keys]
        errors.append(f"train.optimizer.{key}: {optimizer} takes no {key} (its keys: {', '.join(allowed)}); "
                      f"remove it or choose {' / '.join(takers)}")
    return errors


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a duplicated key is an error here."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}; keep one of them",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# DVC writes `-S lr=1e-4` as `lr: 1e-4`, a float in YAML 1.2 (DVC's reader) but a string in PyYAML's YAML 1.1,
# which wants a dot (1.0e-4): without this, the value DVC accepted would be refused here as not a number.
UniqueKeyLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                      list("-+0123456789"))


def load(path="params.yaml"):
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run the stage from the project root (where dvc.yaml is)")
    try:
        p = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({' '.join(str(e).split())}); fix the line it names") from None
    errors = validate(p)
    errors = errors or cross_checks(p)
    if len(errors) == 1:
        raise ParamsError(f"{path}: {errors[0]}")
    if errors:
        raise ParamsError(f"{path}: {len(errors)} problems:\n  " + "\n  ".join(errors))
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
