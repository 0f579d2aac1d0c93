"""The champion's inference prefill, chosen on validation.

Trials fill the hole with Telea (a few ms an image: it runs at every training step). OpenCV's FSR fills it better
(docs/benchmarks.md: masked SSIM +0.03 on real photos) but costs ~0.3 s per 256 px image, too slow for training.
The learned luma residual is small, so the trained model may do better at inference with the FSR fill under it:
both are scored on the search's validation images and the better one is kept (a measurement, not an
assumption: the residual was learnt on Telea fills). The chroma gain is calibrated again for each.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from imgrestore.training.checkpoint import TRIAL_CONFIG, load_model, save_model
from imgrestore.training.data import RestorationDataset
from imgrestore.training.evaluate import evaluate
from imgrestore.training.loop import read_split, with_defaults

CANDIDATES = ("telea", "fsr")


@dataclass
class Polished:
    checkpoint: Path       # the champion's checkpoint folder (the input one when nothing changed)
    prefill: str
    score: float           # its validation score
    scores: dict           # prefill -> validation score


def polish_prefill(checkpoint_dir: str | Path, out_dir: str | Path, device: str = "cpu") -> Polished:
    """Score the checkpoint's model on its trial's validation images with each prefill; keep the best."""
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    cfg = with_defaults(json.loads((checkpoint_dir / TRIAL_CONFIG).read_text()))
    _, val_frame = read_split(cfg["data_dir"], cfg["preproc_csv"], int(cfg["val_fold"]))
    val = RestorationDataset(val_frame, cfg["image_size"])
    base = load_model(checkpoint_dir, device)
    scores, models = {}, {}
    for method in dict.fromkeys((base.prefill_method, *CANDIDATES)):
        model = copy.deepcopy(base)
        model.prefill_method, model.config["prefill"] = method, method
        metrics, _ = evaluate(model, val, device, int(cfg["max_val_images"]), 0, calibrate=bool(cfg["calibrate_gain"]))
        scores[method], models[method] = metrics["score"], model
    best = max(scores, key=scores.get)
    if best == base.prefill_method and base.chroma_gain == models[best].chroma_gain:
        return Polished(checkpoint_dir, best, scores[best], scores)
    save_model(models[best], out_dir)
    (out_dir / TRIAL_CONFIG).write_text((checkpoint_dir / TRIAL_CONFIG).read_text())
    return Polished(out_dir, best, scores[best], scores)
