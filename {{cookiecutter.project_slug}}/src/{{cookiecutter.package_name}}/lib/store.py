"""The MLflow tracking store: its URI resolved once from the repository root, checked (reachable, writable, a
schema this MLflow can use) in seconds before any work, and connected to; URIs only ever shown masked.

    >>> tracking_uri("sqlite:///mlflow.db", root=Path("/repo"), env={})
    'sqlite:////repo/mlflow.db'
    >>> mask("postgresql://me:s3cret@db:5432/mlflow?sslmode=require&password=x")
    'postgresql://me:***@db:5432/mlflow?sslmode=require&password=***'
"""

import contextlib
import os
import re
import socket
import sqlite3
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
from filelock import FileLock

from {{ cookiecutter.package_name }}.lib import files, names

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
    """Fail in seconds, not after MLflow's minutes of HTTP retries, when a tracking server is down, failing (5xx)
    or not there at all (404 at its /health and its REST API: a wrong address or path prefix); another 4xx answer
    (auth) means it is there, and MLflow reports the refusal itself."""
    if not uri.startswith(("http://", "https://")):
        return
    u = urlsplit(uri)  # without user:password@ (urllib can't take it; MLflow's requests sends it as basic auth)
    base = f"{u.scheme}://{u.netloc.rpartition('@')[2]}{u.path.rstrip('/')}"
    code = _status(f"{base}/health", uri, timeout)
    if code == 404 and _status(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", uri, timeout) == 404:
        raise ConnectionError(f"MLflow tracking server {mask(uri)} answers HTTP 404 (not found) at /health and at "
                              "its REST API (/api/2.0/mlflow/...): no MLflow server at this address; check the "
                              "server's host, port and path prefix (behind a proxy it may live under a sub-path, "
                              f"http://host/<prefix>), or {FIXES}")


def _status(url, uri, timeout):
    """The HTTP status of a GET (200 when it succeeds); ConnectionError when down or failing (5xx)."""
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
        return 200
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise ConnectionError(f"MLflow tracking server {mask(uri)} answers HTTP {e.code} ({e.reason}): it is "
                                  f"up but failing; check its log, or {FIXES}") from None
        return e.code
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


def check(uri, root, timeout_s):
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
    """Point MLflow at the project's store after check(); create or migrate a local store. Both under
    store_lock: a store another process is creating has a half-migrated schema. Returns the URI."""
    uri = tracking_uri(cfg["tracking_uri"], root)
    with store_lock(uri):
        check(uri, root, cfg["timeout_s"])
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




def _importable(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def server_problem(auth, env=os.environ):
    """What would stop `make server` (`mlflow server`; AUTH=1: `--app-name basic-auth`) at its start with a
    traceback, as one line with the fix, or None: a package of the server extra missing, or the logins' settings,
    checked by MLflow's own bootstrap (the secret key; on a users' store without the admin, its password: missing,
    or refused by MLflow's rules, each said differently). It creates the admin as `mlflow server` would first do;
    a password that is not the existing admin's is a warning (MLflow sets it only when it creates the admin)."""
    install = "uv sync --frozen --extra server (pip: pip install -e '.[server]'); docs/team.md"
    if auth and not _importable("flask_wtf"):
        return f"make server: logins (AUTH=1, MLflow's basic-auth app) need Flask-WTF, of the server extra: {install}"
    uris = [env.get("MLFLOW_BACKEND_STORE_URI", "")]
    if auth:
        with warnings.catch_warnings():  # the server's modules warn of their own deprecations as they import
            warnings.simplefilter("ignore")
            from mlflow.server import auth as basic_auth  # reads MLFLOW_AUTH_CONFIG_PATH as it imports
        uris.append(basic_auth.auth_config.database_uri)
    for uri in uris:
        if uri.startswith("postgresql+psycopg") and not _importable("psycopg"):
            return f"make server: {mask(uri)} needs psycopg, of the server extra: {install}"
    if not auth:
        return None
    import sqlalchemy
    from mlflow.exceptions import MlflowException

    user, password = basic_auth.auth_config.admin_username, basic_auth.auth_config.admin_password
    try:
        basic_auth.get_flask_server_secret_key()
        basic_auth.bootstrap_admin_user()
        if password and not basic_auth.store.authenticate_user(user, password, use_primary=True):
            print(f"make server: warning: the admin password configured (MLFLOW_AUTH_ADMIN_PASSWORD or the settings "
                  f"file's admin_password) is not the password of '{user}', who exists already: MLflow uses it only "
                  "to create the admin; log in with the admin's own password, or change it with "
                  "update_user_password (docs/team.md)", file=sys.stderr)
    except (MlflowException, sqlalchemy.exc.SQLAlchemyError) as e:  # MLflow's refusals; a users' store unreachable
        return f"make server: {mask(' '.join(str(e).split()))[:600]} (docs/team.md)"
    return None
