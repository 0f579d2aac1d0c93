"""Where MLflow writes, and experiments whose artifacts land beside the database.

MLflow 3 refuses the old ./mlruns file store by default, so the embedded default is a SQLite database
(`mlflow.db`) plus an artifact folder (`mlartifacts/`) in the working directory, both absolute paths
(Ray trials do not run in the driver's working directory).

MLflow creates a new database's tables on first use, without a lock: two processes starting on one fresh
`mlflow.db` both run the migrations and one of them fails (`table logged_models already exists`).
`setup_tracking` therefore creates the store once under an exclusive file lock (`.mlflow.db.lock` beside it).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; MLflow's own table creation is unguarded there too
    fcntl = None

import mlflow
from mlflow.tracking import MlflowClient

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


def default_tracking_uri(workdir: str | os.PathLike | None = None) -> str:
    workdir = Path(workdir or os.getcwd()).resolve()
    return f"sqlite:///{workdir / DEFAULT_DB}"


def _artifact_root(tracking_uri: str) -> str | None:
    """For a local SQLite store, artifacts go to mlartifacts/ beside the database file."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / DEFAULT_ARTIFACTS).resolve().as_uri()
    return None  # a tracking server decides its own artifact store


def setup_tracking(tracking_uri: str | None = None) -> str:
    """Point MLflow at `tracking_uri` (default: the local SQLite store) and return it."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        create_sqlite_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def create_sqlite_store(uri: str) -> None:
    """Create the tables of the SQLite store at `uri` if they are missing, one process at a time (module doc).

    Cheap when they exist: MLflow only checks for them (and reuses its engine for the URI afterwards).
    """
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        _create_tables(uri)
        return
    # A lock file of its own: flock on mlflow.db itself could interfere with SQLite's locks on that file.
    with open(db.with_name(f".{db.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        _create_tables(uri)


def _create_tables(uri: str) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    # MLflow announces the creation on stderr; a command-line tool's stderr is kept for its `error:` line
    quiet = logging.getLogger("mlflow.store.db.utils")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        SqlAlchemyStore(uri, _artifact_root(uri))
    finally:
        quiet.setLevel(level)


def get_or_create_experiment(name: str, tracking_uri: str | None = None) -> str:
    """Experiment id for `name`, creating it (with artifacts beside a local database) if needed."""
    uri = tracking_uri or mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_root(uri))
    except mlflow.exceptions.MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id
