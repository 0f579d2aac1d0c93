"""The best model: logged with mlflow.pytorch, registered, aliased `champion` when it earns it; and loaded back.

The logged MLflow model carries our own checkpoint files (safetensors weights + model.json) as extra files,
so loading it back rebuilds the model from plain data and never unpickles a module. It is logged on the
run it came from (the winning trial's run, whose parameters and learning curves are its lineage; the
search's parent run for a classical restorer), that run is tagged `champion`, and the model version is
described and tagged with its validation score and the fingerprint of its validation (split, fold, size).

The alias moves only to a better model (within the margin below): a new version whose validation
fingerprint equals the current champion's and whose score is lower is registered but not aliased; on another
validation the two scores are not comparable, and the alias moves with that said (`AliasDecision.reason`).
Between a learned model and a classical restorer (the versions' `kind` tag) the learned one must score higher by
the search's `learned_margin`. The search's own paired test (`learned_sem`: tuning.baselines.pick_champion) needs
every image's score, which the registry does not keep, so across searches only the means and that margin are
compared: a learned version registered by a search with the paired test passed it there, against the best
classical restorer of its validation images.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from imgrestore.training.checkpoint import MODEL_SPEC, MODEL_WEIGHTS, TRIAL_CONFIG, load_model

ALIAS = "champion"
SCORE_TAG, VALIDATION_TAG = "val_score", "validation"
# Pinned here so mlflow does not spend a minute inferring requirements from the environment.
REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", "imgrestore", "safetensors", "numpy", "pillow"]


def validation_fingerprint(split_csv_text: str, val_fold, image_size, max_val_images) -> str:
    """What makes two validation scores comparable: the same split file, fold, image size and image cap."""
    h = hashlib.sha256(split_csv_text.encode())
    h.update(json.dumps([val_fold, image_size, max_val_images]).encode())
    return h.hexdigest()[:16]


@dataclass
class AliasDecision:
    moved: bool
    reason: str
    champion_version: str  # the version the alias points at afterwards


def decide_alias(client: MlflowClient, name: str, score: float, fingerprint: str, kind: str | None = None,
                 learned_margin: float = 0.0) -> AliasDecision:
    """Should a new version scoring `score` on validation `fingerprint` take the alias? (Not yet registered.)
    `kind`: "trial" or "classical"; against a current champion of the other kind, the trial's side carries
    `learned_margin` (a learned champion keeps the alias from a classical one only by scoring that much more)."""
    try:
        current = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return AliasDecision(True, "first champion of this model", "")
    cur_score, cur_fp = current.tags.get(SCORE_TAG), current.tags.get(VALIDATION_TAG)
    if cur_score is None or cur_fp is None:
        return AliasDecision(True, f"version {current.version} has no recorded validation score", "")
    if cur_fp != fingerprint:
        return AliasDecision(True, f"version {current.version} was validated on other images (scores not "
                             "comparable); the newest search wins", "")
    if learned_margin > 0 and {kind, current.tags.get("kind")} == {"trial", "classical"}:
        # a learned model against a classical restorer, either way round: the learned one needs the margin
        learned, classical = (score, float(cur_score)) if kind == "trial" else (float(cur_score), score)
        learned_wins = learned - classical >= learned_margin
        how = (f"the learned model ({learned:.4f}) {'beats' if learned_wins else 'does not beat'} the classical "
               f"restorer ({classical:.4f}) by the required {learned_margin:.4f} on the same validation")
        if learned_wins == (kind == "trial"):
            return AliasDecision(True, f"takes the alias from version {current.version}: {how}", "")
        return AliasDecision(False, f"version {current.version} stays champion: {how}", str(current.version))
    if score > float(cur_score):
        return AliasDecision(True, f"beats version {current.version} ({score:.4f} > {float(cur_score):.4f} on "
                             "the same validation)", "")
    return AliasDecision(False, f"version {current.version} stays champion: {float(cur_score):.4f} >= "
                         f"{score:.4f} on the same validation", str(current.version))


def log_champion(checkpoint_dir: str | os.PathLike, run_id: str, registered_name: str, tracking_uri: str,
                 score: float, fingerprint: str, description: str, tags: dict | None = None,
                 learned_margin: float = 0.0) -> tuple[str, str, AliasDecision]:
    """Log the checkpoint's model on `run_id`, register it, and move the `champion` alias if it earns it.

    Returns (models:/NAME@champion, the new version, the alias decision).
    """
    checkpoint_dir = Path(checkpoint_dir)
    model = load_model(checkpoint_dir)
    extra = [str(checkpoint_dir / f) for f in (MODEL_WEIGHTS, MODEL_SPEC, TRIAL_CONFIG) if (checkpoint_dir / f).is_file()]
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    decision = decide_alias(client, registered_name, score, fingerprint, (tags or {}).get("kind"), learned_margin)
    with mlflow.start_run(run_id=run_id):
        # pickle format: the pt2 (torch.export) default needs fixed example shapes, and these models
        # take any image size. load_restorer never unpickles: it rebuilds from the extra files.
        info = mlflow.pytorch.log_model(model, name="champion", extra_files=extra, serialization_format="pickle",
                                        pip_requirements=REQUIREMENTS, registered_model_name=registered_name)
    version = str(info.registered_model_version)
    client.update_model_version(registered_name, version, description=description)
    for key, value in {SCORE_TAG: f"{score:.6f}", VALIDATION_TAG: fingerprint, **(tags or {})}.items():
        client.set_model_version_tag(registered_name, version, key, str(value))
    if decision.moved:
        client.set_registered_model_alias(registered_name, ALIAS, version)
        decision.champion_version = version
        client.set_tag(run_id, "champion", f"{registered_name} version {version}")
    return f"models:/{registered_name}@{ALIAS}", version, decision


def load_restorer(ref: str, tracking_uri: str | None = None, device: str = "cpu") -> torch.nn.Module:
    """A checkpoint folder (model.json + model.safetensors) or a models:/ URI -> the model, eval mode."""
    if not ref.startswith(("models:/", "runs:/")):
        return load_model(ref, device)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="imgrestore-model-") as tmp:  # the weights are read into memory:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=tmp))  # nothing to keep
        specs = list(local.rglob(MODEL_SPEC))
        if not specs:
            raise FileNotFoundError(f"{ref}: the logged model has no {MODEL_SPEC}; was it logged by imgrestore?")
        return load_model(specs[0].parent, device)
