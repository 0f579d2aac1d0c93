"""The best model: logged with mlflow.pytorch, registered, aliased `champion`; and loaded back.

The logged MLflow model carries our own checkpoint files (safetensors weights + model.json) as
extra files, so loading it back rebuilds the model from plain data and never unpickles a module.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient

from imgrestore.training.checkpoint import MODEL_SPEC, MODEL_WEIGHTS, TRIAL_CONFIG, load_model

ALIAS = "champion"
# Pinned here so mlflow does not spend a minute inferring requirements from the environment.
REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", "imgrestore", "safetensors", "numpy", "pillow"]


def log_champion(checkpoint_dir: str | os.PathLike, run_id: str, registered_name: str, tracking_uri: str) -> tuple[str, str]:
    """Log the checkpoint's model on `run_id`, register it and point the `champion` alias at it.

    Returns (models:/NAME@champion, version).
    """
    checkpoint_dir = Path(checkpoint_dir)
    model = load_model(checkpoint_dir)
    extra = [str(checkpoint_dir / f) for f in (MODEL_WEIGHTS, MODEL_SPEC, TRIAL_CONFIG) if (checkpoint_dir / f).is_file()]
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        # pickle format: the pt2 (torch.export) default needs fixed example shapes, and these models
        # take any image size. load_restorer never unpickles: it rebuilds from the extra files.
        info = mlflow.pytorch.log_model(model, name="champion", extra_files=extra, serialization_format="pickle",
                                        pip_requirements=REQUIREMENTS, registered_model_name=registered_name)
    version = str(info.registered_model_version)
    MlflowClient(tracking_uri).set_registered_model_alias(registered_name, ALIAS, version)
    return f"models:/{registered_name}@{ALIAS}", version


def load_restorer(ref: str, tracking_uri: str | None = None, device: str = "cpu") -> torch.nn.Module:
    """A checkpoint folder (model.json + model.safetensors) or a models:/ URI -> the model, eval mode."""
    if not ref.startswith(("models:/", "runs:/")):
        return load_model(ref, device)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=tempfile.mkdtemp(prefix="imgrestore-")))
    specs = list(local.rglob(MODEL_SPEC))
    if not specs:
        raise FileNotFoundError(f"{ref}: the logged model has no {MODEL_SPEC}; was it logged by imgrestore?")
    return load_model(specs[0].parent, device)
