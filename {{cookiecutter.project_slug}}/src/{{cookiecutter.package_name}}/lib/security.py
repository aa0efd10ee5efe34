"""Security checks on the model files, the environment and the configuration; each returns findings with evidence.

A finding is {check, status (PASS / WARN / FAIL), severity (info or one of names.SEVERITIES), evidence,
mitigation}. `audit` runs them all and counts the findings; there is no invented score.

The CVE floors are the dependency floors of the project's pyproject.toml (`torch>=2.10`, ...), read from the
repository root; this module only keeps what each advisory allows, so a floor is written once.
"""

import io
import json
import logging
import os
import re
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

import torch
from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from {{ cookiecutter.package_name }}.lib import models, names, pickles, store

# What an installed version below the pyproject.toml floor exposes.
ADVISORIES = {
    "torch": "CVE-2025-32434, CVE-2026-24747: code execution through torch.load(weights_only=True)",
    "mlflow": "CVE-2026-2652, CVE-2026-0545: tracking-server vulnerabilities in mlflow <= 3.10.1",
}
SECRET_KEY = re.compile(r"pass(word)?|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential", re.I)
SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36}|xox[abpr]-[A-Za-z0-9-]{10,}|"
                          r"-----BEGIN [A-Z ]*PRIVATE KEY-----|sk-[A-Za-z0-9]{32,}|://[^/\s:@]+:[^/\s@]+@")


def finding(check, status, severity, evidence, mitigation=""):
    return {"check": check, "status": status, "severity": severity, "evidence": evidence, "mitigation": mitigation}


def is_safetensors(path):
    """The safetensors layout: 8-byte little-endian header length, then a JSON object header."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 0 < n <= min(Path(path).stat().st_size - 8, 100_000_000):  # the format caps headers at 100 MB
            return False
        try:
            return isinstance(json.loads(f.read(n)), dict)
        except ValueError:
            return False


# --- model files --------------------------------------------------------------------------------------------

def check_formats(paths, model_uri):
    """Each model file in a format that loads without unpickling; the logged MLflow model loadable with pickle
    deserialization switched off."""
    out = []
    for p in paths:
        suffix = Path(p).suffix
        if suffix == ".safetensors" and is_safetensors(p):
            out.append(finding("no-pickle-format", "PASS", "info", f"{p}: safetensors (tensors + JSON header only)"))
        elif suffix == ".onnx":
            import onnx

            onnx.checker.check_model(onnx.load(str(p)))
            out.append(finding("no-pickle-format", "PASS", "info", f"{p}: ONNX protobuf, checker passed"))
        elif suffix == ".pt2" and zipfile.is_zipfile(p):
            try:
                inside = [name for name, data in pickles.leaves(p) if pickles.pickle_like(name, data)]
            except pickles.TooDeep as e:
                inside = [str(e)]
            if inside:
                out.append(finding("no-pickle-format", "WARN", "low", f"{p}: torch.export archive with pickles "
                                   f"inside: {inside} (torch.export.load may unpickle them with weights_only=False)",
                                   "keep the pickle-scan check passing; prefer safetensors or ONNX for files"))
            else:
                out.append(finding("no-pickle-format", "PASS", "info", f"{p}: torch.export archive, no pickle inside"))
        else:
            try:
                torch.load(p, weights_only=True)
                out.append(finding("no-pickle-format", "WARN", "low", f"{p}: pickle, loads with weights_only=True",
                                   "convert to safetensors"))
            except Exception as e:
                out.append(finding("no-pickle-format", "FAIL", "high", f"{p}: refuses weights_only=True load ({e})",
                                   "never load it with weights_only=False; re-export as safetensors"))
    if model_uri:
        import mlflow

        with mock.patch.dict(os.environ, {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}):
            try:
                mlflow.pyfunc.load_model(model_uri)
                out.append(finding("no-pickle-format", "PASS", "info",
                                   f"{model_uri} loads with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false"))
            except Exception as e:
                out.append(finding("no-pickle-format", "FAIL", "high", f"{model_uri} needs pickle to load: {e}",
                                   "log the model with serialization_format='pt2'"))
    return out


def check_scan(folder):
    """picklescan over every pickle (pickles.pickle_like) under `folder`, archive members at any depth included (a .pt2
    holds a torch.save zip picklescan itself does not open). FAIL on a code-running import or on archives nested
    past MAX_ARCHIVE_DEPTH; WARN on nothing but text or an unreadable pickle; else PASS with the counts."""
    from picklescan.scanner import scan_pickle_bytes

    seen, found, flagged, errors, text, deep = [], {}, {}, [], 0, None
    quiet = logging.getLogger("picklescan")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns on malformed streams; the errors are kept below
    try:
        for name, data in pickles.leaves(folder):
            seen.append(name)
            if pickles.is_text(name):
                text += 1  # read as YAML / JSON / text by whoever reads them; as pickles they parse to noise
                continue
            if not pickles.pickle_like(name, data):
                continue  # raw bytes (tensor storage, safetensors, ONNX): no loader unpickles them
            try:
                r = scan_pickle_bytes(io.BytesIO(data), name)
            except Exception as e:  # picklescan raises ValueError on some malformed streams
                errors.append(f"{name}: {type(e).__name__}: {e}")
                continue
            bad = sorted({f"{g.module}.{g.name}" for g in r.globals if g.safety.value != "innocuous"})
            if bad or r.issues_count:
                flagged[name] = bad
            found[name] = len(r.globals)
            if r.scan_err:
                errors.append(f"{name}: pickle stream broken after {len(r.globals)} imports")
    except pickles.TooDeep as e:  # the rest is unscanned: never a pass, nor a warning a gate lets through
        deep = str(e)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        errors.append(f"{folder}: {e}")
    finally:
        quiet.setLevel(level)
    if flagged:
        return [finding("pickle-scan", "FAIL", "critical", f"picklescan: {json.dumps(flagged)}",
                        "delete these files; never load them")]
    if deep:
        return [finding("pickle-scan", "FAIL", "high", deep, "do not load it; re-export the model")]
    if errors or len(seen) == text:
        return [finding("pickle-scan", "WARN", "medium", f"picklescan saw {len(seen)} files and archive members "
                        f"under {folder} ({text} of them text); {'; '.join(errors) or 'nothing to scan'}",
                        "point the scan at the folder that holds the model files")]
    return [finding("pickle-scan", "PASS", "info", f"picklescan: {len(pickles.files(folder))} files "
                    f"({len(seen)} entries counting archive members, {text} text, "
                    f"{len(seen) - text - len(found)} raw data), {len(found)} pickles "
                    f"(imports each: {json.dumps(found)}), no code-running import")]


# --- environment and configuration --------------------------------------------------------------------------

def floors(pyproject):
    """{package: floor Version} from the `>=` dependency specifiers of a pyproject.toml, for ADVISORIES' packages."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    deps = tomllib.loads(Path(pyproject).read_text())["project"]["dependencies"]
    out = {}
    for req in map(Requirement, deps):
        if req.name in ADVISORIES:
            lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "~=", "==")]
            if lows:
                out[req.name] = max(lows)
    return out


def check_versions(pyproject=None, installed=None):
    """Installed versions against the pyproject.toml floors; a pre-release of the floor (2.10.0a0) is below it."""
    pyproject = Path(pyproject or store.repo_root() / "pyproject.toml")
    if not pyproject.is_file():
        return [finding("cve-floor", "WARN", "medium", f"{pyproject}: not found, so no version floor was checked "
                        f"({', '.join(ADVISORIES)})", "run from the project root, where pyproject.toml is")]
    found, out = floors(pyproject), []
    for package, advisory in ADVISORIES.items():
        if package not in found:
            out.append(finding("cve-floor", "WARN", "medium", f"{pyproject}: no floor for {package} ({advisory})",
                               f"add a '{package}>=<fixed version>' dependency"))
            continue
        floor = found[package]
        try:
            v = (installed or {}).get(package) or metadata.version(package)
            ok = Version(v) >= floor  # PEP 440 order: 2.10.0a0 < 2.10 <= 2.10.0+cu128
        except (metadata.PackageNotFoundError, InvalidVersion) as e:
            out.append(finding("cve-floor", "WARN", "medium", f"{package}: installed version unknown ({e})",
                               f"pip install '{package}>={floor}'"))
            continue
        out.append(finding("cve-floor", "PASS" if ok else "FAIL", "info" if ok else "high",
                           f"{package} {v} {'>=' if ok else '<'} {floor} (floor from {pyproject.name}; {advisory})",
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


# --- all of it ----------------------------------------------------------------------------------------------

def summarize(findings):
    """Counts of PASS / WARN / FAIL, and of non-PASS findings per severity."""
    counts = {status.lower(): sum(f["status"] == status for f in findings) for status in ("PASS", "WARN", "FAIL")}
    counts.update({f"severity_{sev}": sum(f["severity"] == sev and f["status"] != "PASS" for f in findings)
                   for sev in names.SEVERITIES})
    return counts


def check_logged_scan(model_uri):
    """check_scan over the files of the model logged to MLflow (train's .pt2, whose zip holds torch.save pickles),
    downloaded from the tracking store: what a user pulls from the registry is scanned too."""
    if not model_uri:
        return []
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        return [{**f, "evidence": f["evidence"].replace(str(local), model_uri)} for f in check_scan(local)]


def audit(model_files, scan_dir, model_uri, tracking_uri, values, input_shape, pyproject=None):
    """Every check; returns (findings, summary). pyproject defaults to the repository root's."""
    findings = [*check_formats(model_files, model_uri), *check_scan(scan_dir), *check_logged_scan(model_uri),
                *check_versions(pyproject),
                *check_tracking(tracking_uri), *check_secrets(values), *check_input_validation(input_shape)]
    return findings, summarize(findings)
