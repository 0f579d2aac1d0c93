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
from imgrestore.training.data import to_uint8_restored, to_uint8_rgb

GAIN_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
HOLE_GRID = (0.0, 0.5, 1.0)


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


@torch.no_grad()
def evaluate(model, dataset, device, limit: int, n_grid: int, calibrate: bool = True,
             calibration_images: int = 64, batch_size: int = 8, autocast: dict | None = None):
    """Score up to `limit` validation images; returns (metrics, grid rows).

    Learned models (``Restorer`` with chroma): the gain is chosen on the first `calibration_images` from
    GAIN_GRID, then the hole factor from HOLE_GRID (when `calibrate`), both set on the model, and every image is
    scored at them; metrics then also hold ``chroma_gain``, ``hole_chroma`` and ``score_gray`` (the score
    without colour: what the model's colour adds is the difference). The calibration images are among the
    scored ones, so the score is slightly optimistic (two scalars fitted on them); held-out benchmarks measure
    the gap.
    """
    model.eval()
    outputs = []  # per image: (gray, mask, gt_u8, y, chroma), all on the CPU
    for gray, mask, rgb in _batches(dataset, limit, batch_size):
        with torch.autocast(**(autocast or {"device_type": "cpu", "enabled": False})):
            aux = model(gray.to(device), mask.to(device), return_aux=True)
        for j in range(len(gray)):
            outputs.append((gray[j], mask[j], to_uint8_rgb(rgb[j]), aux["y"][j:j + 1].float().cpu(),
                            aux["chroma"][j:j + 1].float().cpu()))

    def score(items, gain=None, hole=None):
        rows = []
        for gray, mask, gt, y, chroma in items:
            pred = to_uint8_restored(model.compose(y, chroma, mask[None], gain, hole)[0], gray, mask)
            rows.append(score_image(gt, pred, mask[0].numpy() > 0))
        return rows

    def mean_score(items, gain, hole):
        return float(np.mean([r["score"] for r in score(items, gain, hole)]))

    has_colour = getattr(model, "chroma_mode", "none") != "none"
    extra = {}
    if has_colour and calibrate:  # the gain first (colour as it is inside the hole), then the hole's factor
        sub = outputs[:calibration_images]
        by_gain = {g: mean_score(sub, g, 1.0) for g in GAIN_GRID}
        model.chroma_gain = max(by_gain, key=by_gain.get)
        by_hole = {h: mean_score(sub, model.chroma_gain, h) for h in HOLE_GRID} if model.chroma_gain else {1.0: 0}
        model.hole_chroma = max(by_hole, key=by_hole.get)
    if has_colour:
        extra = {"chroma_gain": model.chroma_gain, "hole_chroma": model.hole_chroma,
                 "score_gray": mean_score(outputs, 0.0, 0.0)}
    rows = score(outputs)
    metrics = {k: float(np.mean([r[k] for r in rows])) for k in KEYS} if rows else {}
    shown = []
    for gray, mask, gt, y, chroma in _spread(outputs, n_grid):
        pred = to_uint8_restored(model.compose(y, chroma, mask[None])[0], gray, mask)
        shown.append(((gray[0].numpy() * 255).round().astype(np.uint8), pred, gt))
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
