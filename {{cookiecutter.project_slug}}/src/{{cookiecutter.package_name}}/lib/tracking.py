"""Where runs go: the tracking store resolved once, from the repository root, and checked before work starts;
and what every tracked stage logs as its run closes, its energy (codecarbon, offline).

Not a wrapper: stages call mlflow.log_params / log_metrics / log_artifact themselves.

    >>> tracking_uri("sqlite:///mlflow.db", root=Path("/repo"), env={})
    'sqlite:////repo/mlflow.db'

A URI is only ever printed masked:

    >>> mask("postgresql://me:s3cret@db:5432/mlflow?sslmode=require&password=x")
    'postgresql://me:***@db:5432/mlflow?sslmode=require&password=***'
"""

import contextlib
import json
import os
import re
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import psutil
from filelock import FileLock

from {{ cookiecutter.package_name }}.lib import files, names, paths

# Default ports of the database stores MLflow talks to directly (SQLAlchemy URIs).
DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def mask(uri):
    """`uri` with the password of user:password@ and secret query values replaced by ***."""
    return re.sub(names.URI_SECRET_QUERY, r"\1***", re.sub(names.URI_PASSWORD, r"\1:***@", uri))


def has_credentials(uri):
    return bool(re.search(names.URI_PASSWORD, uri) or re.search(names.URI_SECRET_QUERY, uri))


def repo_root():
    # DVC sets DVC_ROOT to the main repository, also for `dvc exp run --temp/--queue`, whose commands run in
    # throw-away copies under .dvc/tmp/exps: anything resolved against the working directory there is lost.
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def tracking_uri(configured, root, env=os.environ):
    """MLFLOW_TRACKING_URI wins over params; a relative sqlite path is made absolute against `root`."""
    uri = env.get("MLFLOW_TRACKING_URI") or configured
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str((Path(root) / uri[len(prefix):]).resolve())
    return uri


FIXES = ("fix mlflow.tracking_uri / MLFLOW_TRACKING_URI, use the embedded store (sqlite:///mlflow.db), or set "
         "mlflow.enabled: false")


def check_reachable(uri, timeout=5.0):
    """Fail in seconds, not after MLflow's minutes of HTTP retries, when a tracking server is down or failing
    (5xx); a 4xx answer (auth, a proxy page) means it is there, and MLflow reports the refusal itself."""
    if not uri.startswith(("http://", "https://")):
        return
    u = urlsplit(uri)  # without user:password@ (urllib can't take it; MLflow's requests sends it as basic auth)
    try:
        urllib.request.urlopen(f"{u.scheme}://{u.netloc.rpartition('@')[2]}{u.path.rstrip('/')}/health",
                               timeout=timeout).close()
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise ConnectionError(f"MLflow tracking server {mask(uri)} answers HTTP {e.code} ({e.reason}): it is "
                                  f"up but failing; check its log, or {FIXES}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(
            f"MLflow tracking server {mask(uri)} is unreachable ({getattr(e, 'reason', e)}). Start it (mlflow server "
            f"--host 127.0.0.1 --port 5000), {FIXES}") from None


def check_database(uri, timeout=5.0):
    """A database store (postgresql://, mysql://, mssql://): its port answers and it takes a connection, within
    `timeout` seconds. MLflow itself would retry the connection for about two minutes."""
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme not in DB_PORTS:
        return
    u = urlsplit(uri)
    if u.hostname:  # no host: a local Unix socket, checked by the connection below
        try:
            socket.create_connection((u.hostname, u.port or DB_PORTS[scheme]), timeout=timeout).close()
        except OSError as e:
            raise ConnectionError(f"tracking database {mask(uri)} is unreachable ({e.strerror or e}); start it, "
                                  f"{FIXES}") from None
    import sqlalchemy

    timeouts = {"postgresql": {"connect_timeout": int(timeout)}, "mysql": {"connect_timeout": int(timeout)}}
    engine = sqlalchemy.create_engine(uri, connect_args=timeouts.get(scheme, {}), poolclass=sqlalchemy.pool.NullPool)
    try:
        engine.connect().close()
    except sqlalchemy.exc.SQLAlchemyError as e:
        cause = str(getattr(e, "orig", e)).strip().splitlines()[0]
        raise ConnectionError(f"tracking database {mask(uri)} refused the connection ({cause}); check the database "
                              "name, and give the password in the environment (PGPASSWORD or ~/.pgpass for "
                              f"PostgreSQL), or {FIXES}") from None
    finally:
        engine.dispose()


def check_sqlite(db, timeout=5.0):
    """An embedded store file, before MLflow opens it: a file (not a folder), writable, an SQLite database, MLflow's
    (not another application's), at this MLflow's schema, and not held locked by another process."""
    fix = f"move it aside (mv {db} {db}.bak) to start a new store, or point mlflow.tracking_uri elsewhere"
    files.check_writable(db.parent)
    if not db.exists():
        return
    if not db.is_file():
        raise IsADirectoryError(f"{db}: the tracking store is a folder, not an SQLite file; {fix}")
    files.check_writable(db)
    with open(db, "rb") as f:
        if db.stat().st_size and f.read(16) != b"SQLite format 3\x00":
            raise ValueError(f"{db}: not an SQLite database (corrupt, or another kind of file); {fix}")
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=timeout)) as con:
            tables = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
            version = (con.execute("select version_num from alembic_version").fetchone() or [None])[0] \
                if "alembic_version" in tables else None
            con.execute("begin immediate")  # the write lock every MLflow write takes
            con.rollback()
    except sqlite3.OperationalError as e:
        if "locked" in str(e):
            raise ConnectionError(f"{db}: locked by another process for over {timeout:g} s (mlflow.timeout_s); "
                                  "wait for it to finish, or stop it") from None
        raise ValueError(f"{db}: unreadable as an SQLite database ({e}); {fix}") from None
    except sqlite3.DatabaseError as e:
        raise ValueError(f"{db}: corrupt SQLite database ({e}); {fix}") from None
    check_schema(db, tables, version, fix)


def check_schema(db, tables, version, fix):
    if tables and "experiments" not in tables:
        raise ValueError(f"{db}: an SQLite database of another application (tables {', '.join(sorted(tables)[:4])}), "
                         f"not an MLflow store; {fix}")
    if version is None:
        return  # empty, or an old store without migrations: MLflow creates or refuses it itself
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    scripts = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
    head = scripts.get_current_head()
    if version == head:
        return
    if version in {s.revision for s in scripts.walk_revisions()}:
        raise ValueError(f"{db}: made by an older MLflow (schema {version}, this one is {head}); back it up, then "
                         f"run `mlflow db upgrade sqlite:///{db}`")
    raise ValueError(f"{db}: made by a newer MLflow (schema {version} is unknown to mlflow "
                     f"{mlflow.__version__}); install the MLflow that wrote it, or {fix}")


def bound_requests(timeout_s):
    """MLflow's HTTP retries (7 with exponential backoff, 120 s a request: minutes) cut to about timeout_s in
    all: 3 attempts of timeout_s / 3 s each, 1 s and 2 s apart. Variables already set in the environment win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(timeout_s) // 3)))


def preflight(uri, root, timeout_s):
    """The store answers and takes writes, checked in seconds before any work; one line naming the masked URI
    or the file and the fix otherwise."""
    bound_requests(timeout_s)
    if has_credentials(uri):  # MLflow prints "View run ... at: <the URI>" as a run ends; the stages print it masked
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    if uri.startswith("sqlite:///"):
        check_sqlite(Path(uri[len("sqlite:///"):]), timeout_s)
        files.check_writable(root / "mlruns", directory=True)  # where new experiments keep their artifacts
    check_reachable(uri, timeout_s)
    check_database(uri, timeout_s)


@contextlib.contextmanager
def store_lock(uri):
    """Hold an exclusive lock beside a local sqlite store (no-op for servers).

    Several processes opening a fresh store at once (queue workers, parallel stages) race in MLflow's schema
    migrations and die ("duplicate column name"); creating the same experiment twice fails too. Both happen
    under this lock, once; later opens only wait for it briefly."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(db.with_name(db.name + ".lock")):
        yield


def connect(cfg, root):
    """Point MLflow at the project's store after preflight(); create or migrate a local store. Both under
    store_lock: a store another process is creating has a half-migrated schema. Returns the URI."""
    uri = tracking_uri(cfg["tracking_uri"], root)
    with store_lock(uri):
        preflight(uri, root, cfg["timeout_s"])
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient()
        client.search_experiments(max_results=1)  # tracking tables
        client.search_registered_models(max_results=1)  # registry tables
    return uri


def set_experiment(cfg, root):
    """connect(), then the project's experiment id, created if needed.

    With a local sqlite store, new experiments keep artifacts in <root>/mlruns, absolute: MLflow's default
    (./mlruns of the working directory) would land in DVC's temporary experiment copies."""
    uri = connect(cfg, root)
    with store_lock(uri):
        exp = mlflow.get_experiment_by_name(cfg["experiment"])
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise ValueError(f"MLflow experiment {cfg['experiment']!r} (id {exp.experiment_id}) is deleted: restore it "
                             f"(mlflow experiments restore --experiment-id {exp.experiment_id}), or set "
                             "mlflow.experiment to another name")
        if exp is not None:
            return exp.experiment_id
        location = (root / "mlruns").as_uri() if uri.startswith("sqlite:") else None
        return mlflow.create_experiment(cfg["experiment"], artifact_location=location)


def process_tags():
    """Which process holds a run open, so a later stage can tell a live run from an orphan."""
    return {"process.host": socket.gethostname(), "process.pid": str(os.getpid())}


def close_orphans(experiment_id):
    """End KILLED the RUNNING runs of this experiment whose process, on this host, is gone (SIGKILL, OOM,
    power loss: nothing in the process could end them). Runs of live processes, such as parallel queue
    workers, and of other hosts are left alone. Returns the ids closed."""
    closed = []
    for run in mlflow.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  output_format="list"):
        tags = run.data.tags
        pid = int(tags.get("process.pid", 0))
        if tags.get("process.host") == socket.gethostname() and not (pid > 0 and psutil.pid_exists(pid)):
            mlflow.MlflowClient().set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
            print(f"tracking: run {run.info.run_id} was left RUNNING by a dead process "
                  f"(pid {tags['process.pid']}); marked KILLED")
    return closed


def resume(cfg):
    """Reopen the pipeline's run, the one train recorded in paths.RUN_FILE; None when tracking is off."""
    ref = json.loads(paths.RUN_FILE.read_text())
    if not ref["enabled"]:
        return None
    connect(cfg, repo_root())
    close_orphans(ref["experiment_id"])
    return mlflow.start_run(run_id=ref["run_id"], tags=process_tags())


@contextlib.contextmanager
def closing(start, stage_name=None, cfg=None):
    """Yield start() (an MLflow run, or None with tracking off) and end the active run FINISHED, FAILED, or
    KILLED (Ctrl-C; SIGTERM once routed to KeyboardInterrupt), never RUNNING. The run is opened inside, so
    a signal that lands while it opens is caught too: MLflow's own exit hook would mark it FINISHED, and
    mlflow.start_run's context manager calls an interrupt FAILED.

    With `cfg` (params' mlflow section) and mlflow.energy.enabled, the stage's energy is measured from the
    run's opening to its end and logged into it (log_energy): every tracked stage gets it here, once."""
    tracker = None
    energy = cfg is not None and cfg["energy"]["enabled"]
    try:
        if energy:  # before the run opens: a country codecarbon does not know leaves no FAILED run behind
            check_country(cfg["energy"]["country"])
        run = start()
        if run is not None and energy:
            tracker = energy_tracker(cfg["energy"]["country"], stage_name)
        yield run
    except KeyboardInterrupt:
        stop_energy(tracker)
        if mlflow.active_run():
            mlflow.end_run("KILLED")
        raise
    except BaseException:
        stop_energy(tracker)
        if mlflow.active_run():
            mlflow.end_run("FAILED")
        raise
    if mlflow.active_run():
        if tracker is not None:
            log_energy(tracker, stage_name, cfg["energy"]["country"])
        mlflow.end_run("FINISHED")


# --- energy (codecarbon) ------------------------------------------------------------------------------------

# codecarbon's CPU modes (codecarbon.core.resource_tracker / external.hardware), in words for the report.
CPU_METHODS = {"intel_rapl": "RAPL energy counters (measured)", "windows_emi": "Windows energy meter (measured)",
               "intel_power_gadget": "Intel Power Gadget (measured)", "apple_powermetrics": "powermetrics (measured)",
               "cpu_load": "CPU load x TDP (estimated)", "constant": "50% of TDP (constant estimate)"}


def check_country(country):
    """The country has a carbon intensity in codecarbon's own table (offline mode needs one)."""
    from codecarbon.input import DataSource

    known = DataSource().get_global_energy_mix_data()
    if country not in known:
        raise ValueError(f"mlflow.energy.country={country!r}: codecarbon has no carbon intensity for it; use an ISO "
                         f"3166-1 alpha-3 code it knows ({', '.join(sorted(known)[:8])}, ...; "
                         "codecarbon/data/private_infra/global_energy_mix.json) or set mlflow.energy.enabled: false")


def energy_tracker(country, stage_name):
    """codecarbon's offline tracker, started (the country checked by check_country): no network, nothing written
    to files, quiet (errors only). tracking_mode="process": this stage's own CPU share and memory, not other
    jobs' on a shared machine."""
    import logging

    from codecarbon import OfflineEmissionsTracker

    # Its logger says INFO lines and a warning at every start, before log_level applies.
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    tracker = OfflineEmissionsTracker(country_iso_code=country, project_name=stage_name, output_methods=[],
                                      log_level="error", tracking_mode="process", allow_multiple_runs=True)
    tracker.start()
    return tracker


def stop_energy(tracker):
    if tracker is not None:
        tracker.stop()


def energy_method(tracker):
    """How codecarbon measured or estimated each part, CPU first ("CPU: RAPL energy counters (measured), AMD EPYC
    7B13; GPU: none found; RAM: ..."), from the hardware it set up."""
    parts = {}
    for hw in tracker._hardware:  # codecarbon keeps no public list of its methods
        kind = type(hw).__name__
        if kind == "CPU":
            mode = getattr(hw, "_mode", "unknown")
            how = CPU_METHODS.get(mode, mode)
            if mode in ("cpu_load", "constant"):  # codecarbon's TDP for the model x physical CPUs, or its fallback
                how += f", full load = {hw._tdp} W" + (" (generic: CPU model not in codecarbon's table)"
                                                       if getattr(hw, "_is_generic_tdp", False) else "")
            parts["CPU"] = f"CPU: {how}, {hw.get_model() or 'model unknown'}"
        elif kind == "GPU":
            parts["GPU"] = f"GPU: NVML power readings (measured), {tracker._conf.get('gpu_model') or 'model unknown'}"
        elif kind == "RAM":
            parts["RAM"] = "RAM: codecarbon's power model per GB in use (estimated)"
        else:
            parts[kind] = f"{kind}: {hw.description()}"
    parts.setdefault("GPU", "GPU: none found")
    order = ["CPU", "GPU", "RAM"]
    return "; ".join(parts[k] for k in sorted(parts, key=lambda k: order.index(k) if k in order else len(order)))


def log_energy(tracker, stage_name, country):
    """Stop the tracker; log <stage>/energy_kwh, <stage>/emissions_kg_co2eq, <stage>/energy_duration_s and the
    method (tag <stage>.energy_method) into the active run."""
    tracker.stop()
    d = getattr(tracker, "final_emissions_data", None)
    if d is None:  # codecarbon's start and stop swallow their own exceptions: say so rather than log zeros
        mlflow.set_tag(f"{stage_name}.energy_method", "not measured: codecarbon failed (its errors are logged above)")
        return
    mlflow.log_metrics({f"{stage_name}/energy_kwh": d.energy_consumed, f"{stage_name}/emissions_kg_co2eq": d.emissions,
                        f"{stage_name}/energy_duration_s": d.duration})
    mlflow.set_tags({f"{stage_name}.energy_method": energy_method(tracker), "energy_country": country})


def start(cfg, default_name, tags):
    """Open the pipeline's run (train) in the project's experiment, tagged with `tags`, the git / DVC context and
    this process; its name is mlflow.run_name or default_name."""
    experiment_id = set_experiment(cfg, repo_root())
    close_orphans(experiment_id)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=cfg["run_name"] or default_name,
                           tags={**tags, **context_tags(), **process_tags()}, log_system_metrics=cfg["system_metrics"])
    return run


def pipeline_run(cfg, stage_name):
    """The stages after train: `with tracking.pipeline_run(p["mlflow"], "analyze") as run:` reopens train's run
    (None with tracking off), measures the stage's energy and ends the run as closing() says."""
    return closing(lambda: resume(cfg), stage_name, cfg)


def run_name(architecture, encoder, pretrained, now=None):
    parts = [architecture.lower(), encoder, "pretrained" if pretrained else "random",
             time.strftime("%Y%m%d-%H%M%S", time.localtime(now))]
    return "_".join(p for p in parts if p)


NOT_AN_EXPERIMENT = "none (not a DVC experiment: dvc repro or python -m)"


def git(*args):
    """A git command's output, or None outside a repository / without git."""
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def context_tags(env=os.environ):
    """Git commit, whether the workspace differed from it, and the DVC stage / experiment this process runs
    under. git_dirty counts tracked files changed since the commit, leaving out what the pipeline itself
    rewrites (dvc.lock and the stages' metrics, plots and reports)."""
    commit = (git("rev-parse", "HEAD") or "none").strip()
    changed = [line[3:] for line in (git("status", "--porcelain", "--untracked-files=no") or "").splitlines()
               if not line[3:].startswith(paths.PIPELINE_WRITTEN)]
    tags = {"git_commit": commit, "git_dirty": str(bool(changed)).lower(),
            "dvc_exp_name": env.get("DVC_EXP_NAME") or NOT_AN_EXPERIMENT}
    if changed:
        tags["git_dirty_files"] = ", ".join(changed[:10]) + (f" (+{len(changed) - 10} more)" if len(changed) > 10
                                                            else "")
    for var in ("DVC_STAGE", "DVC_EXP_BASELINE_REV"):
        if env.get(var):
            tags[var.lower()] = env[var]
    return tags
