"""Validation: the competition metric on the restored uint8 images, and the chroma gain calibrated on it.

A model's chroma (Cb, Cr) comes out desaturated or over-saturated depending on its loss; the metric's hue term
counts every pixel's hue whatever its saturation, and its SSIM terms punish wrong colour. One scalar gain on the
chroma, picked on validation, trades the two, then a factor on it inside the lost region (where a wrong colour
also costs the masked SSIM, 40% of the score); both are saved in the model's config, so the checkpoint and the
submission use them. The grids include 0 (no colour): a model is never scored below its own gray.
The validation score reported for an epoch is the one at the chosen values.
"""
from __future__ import annotations

import numpy as np
import torch

from imgrestore.metrics import KEYS, score_image
from imgrestore.models.color import lock_luma_torch
from imgrestore.torch_metrics import quantize, score_batch_torch
from imgrestore.training.data import to_uint8_restored, to_uint8_rgb

GAIN_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
HOLE_GRID = (0.0, 0.5, 1.0)
METRICS = ("auto", "numpy", "torch")  # auto: torch on a GPU (batched, on the device), numpy on a CPU


def metric_backend(metric: str, device) -> str:
    """'numpy' (imgrestore.metrics, one image at a time on the CPU) or 'torch' (imgrestore.torch_metrics,
    batched on `device`, equal to it within 1e-9: tests/test_evaluate.py)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric == "auto":
        return "torch" if torch.device(device).type == "cuda" else "numpy"
    return metric


def _batches(dataset, limit: int, batch_size: int):
    """(gray, mask, rgb) batches of up to `batch_size` images of one size, in dataset order."""
    group = []
    for i in range(min(len(dataset), limit)):
        item = dataset[i]
        if group and (len(group) == batch_size or item[0].shape != group[0][0].shape):
            yield [torch.stack(t) for t in zip(*group)]
            group = []
        group.append(item)
    if group:
        yield [torch.stack(t) for t in zip(*group)]


def _first(batches: list, n: int) -> list:
    """The first n images of a list of batches (tuples of tensors), as batches."""
    out = []
    for item in batches:
        if n <= 0:
            break
        out.append(tuple(x[:n] for x in item))
        n -= len(item[0])
    return out


def _score_numpy(model, batches, gain, hole) -> dict:
    rows = []
    for gray, mask, gt, y, chroma in batches:
        for j in range(len(gray)):
            pred = to_uint8_restored(model.compose(y[j:j + 1], chroma[j:j + 1], mask[j:j + 1], gain, hole)[0],
                                     gray[j], mask[j])
            rows.append(score_image(gt[j].permute(1, 2, 0).numpy(), pred, mask[j, 0].numpy() > 0))
    return {k: np.array([r[k] for r in rows]) for k in KEYS}


def _score_torch(model, batches, gain, hole) -> dict:
    got = []
    for gray, mask, gt, y, chroma in batches:
        pred = quantize(model.compose(y, chroma, mask, gain, hole))
        pred = lock_luma_torch(pred, quantize(gray[:, 0]), mask[:, 0] < 0.5)
        got.append(score_batch_torch(gt, pred, mask))
    if not got:
        return {k: np.empty(0) for k in KEYS}
    return {k: torch.cat([g[k] for g in got]).cpu().numpy() for k in KEYS}


@torch.no_grad()
def evaluate(model, dataset, device, limit: int, n_grid: int, calibrate: bool = True,
             calibration_images: int = 64, batch_size: int = 8, autocast: dict | None = None,
             metric: str = "auto"):
    """Score up to `limit` validation images; returns (metrics, grid rows).

    Learned models (``Restorer`` with chroma): the gain is chosen on the first `calibration_images` from
    GAIN_GRID, then the hole factor from HOLE_GRID (when `calibrate`), both set on the model, and every image is
    scored at them; metrics then also hold ``chroma_gain``, ``hole_chroma`` and ``score_gray`` (the score
    without colour: what the model's colour adds is the difference). The calibration images are among the
    scored ones, so the score is slightly optimistic (two scalars fitted on them); held-out benchmarks measure
    the gap.

    metric: see `metric_backend`. With 'torch' the network outputs stay on the device and every scoring (the
    calibration's too) runs there in batches; with 'numpy' they are moved to the CPU and scored image by image.
    """
    model.eval()
    backend = metric_backend(metric, device)
    keep_on = torch.device(device) if backend == "torch" else torch.device("cpu")
    outputs = []  # per batch: gray, mask, truth as uint8 (B,3,H,W), y, chroma; on `keep_on`
    for gray, mask, rgb in _batches(dataset, limit, batch_size):
        with torch.autocast(**(autocast or {"device_type": "cpu", "enabled": False})):
            aux = model(gray.to(device), mask.to(device), return_aux=True)
        outputs.append((gray.to(keep_on), mask.to(keep_on), quantize(rgb).to(keep_on),
                        aux["y"].float().to(keep_on), aux["chroma"].float().to(keep_on)))
    score = _score_torch if backend == "torch" else _score_numpy

    def mean_score(batches, gain, hole) -> float:
        return float(np.mean(score(model, batches, gain, hole)["score"]))

    # nothing to score: no calibration either
    has_colour = getattr(model, "chroma_mode", "none") != "none" and bool(outputs)
    extra = {}
    if has_colour and calibrate:  # the gain first (colour as it is inside the hole), then the hole's factor
        sub = _first(outputs, calibration_images)
        by_gain = {g: mean_score(sub, g, 1.0) for g in GAIN_GRID}
        model.chroma_gain = max(by_gain, key=by_gain.get)
        by_hole = {h: mean_score(sub, model.chroma_gain, h) for h in HOLE_GRID} if model.chroma_gain else {1.0: 0}
        model.hole_chroma = max(by_hole, key=by_hole.get)
    if has_colour:
        extra = {"chroma_gain": model.chroma_gain, "hole_chroma": model.hole_chroma,
                 "score_gray": mean_score(outputs, 0.0, 0.0)}
    per_image = score(model, outputs, None, None) if outputs else {}
    metrics = {k: float(np.mean(v)) for k, v in per_image.items()}
    shown = []
    for b, j in _spread([(b, j) for b, item in enumerate(outputs) for j in range(len(item[0]))], n_grid):
        gray, mask, gt, y, chroma = (x[j:j + 1].cpu() for x in outputs[b])
        pred = to_uint8_restored(model.compose(y, chroma, mask)[0], gray[0], mask[0])
        shown.append(((gray[0, 0].numpy() * 255).round().astype(np.uint8), pred, gt[0].permute(1, 2, 0).numpy()))
    return {**metrics, **extra}, shown


@torch.no_grad()
def sample_grid(model, dataset, device, limit: int, n_grid: int, autocast: dict | None = None) -> list:
    """Only the grid rows of `evaluate` (the same images), nothing scored: the untrained model's "before"."""
    model.eval()
    rows = []
    for i in _spread(list(range(min(len(dataset), limit))), n_grid):
        gray, mask, rgb = dataset[i]
        with torch.autocast(**(autocast or {"device_type": "cpu", "enabled": False})):
            pred = model(gray[None].to(device), mask[None].to(device)).float()[0].cpu()
        rows.append(((gray[0].numpy() * 255).round().astype(np.uint8), to_uint8_restored(pred, gray, mask),
                     to_uint8_rgb(rgb)))
    return rows


def _spread(items: list, n: int) -> list:
    """n items spread evenly over the list (the validation set is ordered by cluster-free name, so this shows
    images from across it rather than the first few)."""
    if n <= 0 or not items:
        return []
    idx = np.unique(np.linspace(0, len(items) - 1, min(n, len(items))).round().astype(int))
    return [items[i] for i in idx]
