"""Where MLflow writes, and experiments whose artifacts land beside the database.

MLflow 3 refuses the old ./mlruns file store by default, so the embedded default is a SQLite database
(`mlflow.db`) plus an artifact folder (`mlartifacts/`) in the working directory, both absolute paths
(Ray trials do not run in the driver's working directory).
"""
from __future__ import annotations

import os
from pathlib import Path

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
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


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
