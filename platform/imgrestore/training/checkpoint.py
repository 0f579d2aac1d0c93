"""Checkpoints as plain files: weights in safetensors, architecture and settings in JSON.

    model.safetensors   the model's state dict
    model.json          {"name": registered model name, "config": its kwargs, and "hue_prior" when the model
                        decodes with one (imgrestore.models.hue_prior; chosen on validation by tuning.decoding)}
    train_state.pt      optimizer / scheduler state and the epoch (loaded with weights_only=True)
    trial_config.json   the trial's whole config (what was trained, how)
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from imgrestore.models import create_model
from imgrestore.models.hue_prior import HuePrior

MODEL_WEIGHTS, MODEL_SPEC, TRAIN_STATE, TRIAL_CONFIG = "model.safetensors", "model.json", "train_state.pt", "trial_config.json"


def save_model(model: torch.nn.Module, directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / MODEL_WEIGHTS))
    spec = {"name": model.name, "config": model.config}
    if getattr(model, "hue_prior", None) is not None:
        spec["hue_prior"] = model.hue_prior.to_config()
    (directory / MODEL_SPEC).write_text(json.dumps(spec, indent=2))
    return directory


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model from model.json and load its weights (no pickle involved)."""
    directory = Path(directory)
    for required in (MODEL_WEIGHTS, MODEL_SPEC):
        if not (directory / required).is_file():
            raise FileNotFoundError(f"{directory}: not a model checkpoint (missing {required})")
    spec = json.loads((directory / MODEL_SPEC).read_text())
    config = dict(spec["config"])
    if "pretrained" in config:
        config["pretrained"] = False  # the checkpoint's weights replace any pretrained ones
    model = create_model(spec["name"], **config)
    model.config = spec["config"]
    model.load_state_dict(load_file(str(directory / MODEL_WEIGHTS)))
    model.hue_prior = HuePrior.from_config(spec.get("hue_prior"))  # submission.predict.restore applies it
    return model.to(device).eval()


def save_train_state(directory: str | os.PathLike, epoch: int, optimizer, scheduler, extra: dict) -> None:
    torch.save({"epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "extra": extra}, Path(directory) / TRAIN_STATE)


def load_train_state(directory: str | os.PathLike) -> dict:
    return torch.load(Path(directory) / TRAIN_STATE, map_location="cpu", weights_only=True)
