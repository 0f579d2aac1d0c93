"""Damage masks: the exact one from a training pair, and one detected from the damaged input alone.

DACON 236420 damage is ONE connected region filled with ONE constant gray value (see
:mod:`imgrestore.data.damage`). At training time the mask is exact: :func:`true_mask`. At test time
:func:`detect_mask` finds it from the input: the damaged region is a large connected set of pixels
of one exact value whose border is a *step*. Natural photos do have big flat areas of one exact
value (blown-out 255 skies, crushed 0 shadows, very smooth gradients), but there the image fades
into the flat area (the pixels just outside differ by 1 or 2 levels), while at the damage border the
photo jumps from the fill value to whatever the scene was.

The detector returns the component's exact pixels without filling holes: real damage can enclose
untouched image (TEST_069 is a self-intersecting polygon filled even-odd, with a hole where two
spikes cross), and any pixel not equal to the fill value cannot be damage.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from skimage.measure import label as _label


def true_mask(input_gray: np.ndarray, gt_rgb: np.ndarray) -> np.ndarray:
    """HxW bool: exactly ``input_gray != gray(gt)`` with Pillow's ``convert("L")``, as DACON made it.

    Pixels inside the damage whose original gray equalled the fill value are not in this mask.
    """
    input_gray = np.asarray(input_gray)
    gt_rgb = np.asarray(gt_rgb)
    if input_gray.ndim != 2:
        raise ValueError(f"input_gray must be HxW, got shape {input_gray.shape}")
    if gt_rgb.shape[:2] != input_gray.shape:
        raise ValueError(f"input {input_gray.shape} and ground truth {gt_rgb.shape} differ in size")
    gt_gray = np.asarray(Image.fromarray(np.ascontiguousarray(gt_rgb)).convert("L"))
    return input_gray != gt_gray


@dataclass(frozen=True)
class Detection:
    """Diagnostics of :func:`detect_mask`.

    value:       the fill value of the chosen region (-1 if nothing was found).
    area:        its size in pixels.
    contrast:    share of its border edges where the image steps by more than ``step`` levels.
    compactness: share of its pixels whose four neighbours are all in the region.
    score:       area * compactness * contrast**2, the quantity maximised.
    confidence:  1 - runner_up_score / score (0: a tie with another candidate; 1: no competitor).
    candidates:  (value, area, contrast, compactness, score) of the best few candidates, best first.
    """

    value: int
    area: int
    contrast: float
    compactness: float
    score: float
    confidence: float
    candidates: tuple[tuple[int, int, float, float, float], ...] = field(default=())


_NOTHING = Detection(value=-1, area=0, contrast=0.0, compactness=0.0, score=0.0, confidence=0.0)


def _components(gray: np.ndarray):
    """Label 4-connected sets of equal value; return labels and per-label statistics."""
    lab = _label(gray.astype(np.int16), background=-1, connectivity=1)  # labels 1..n, none is 0
    return lab, int(lab.max())


def detect_mask(
    input_gray: np.ndarray,
    min_area: float = 0.002,
    step: int = 3,
    values: tuple[int, int] = (0, 255),
    return_info: bool = False,
):
    """Find the damaged region from the damaged input alone.

    input_gray: HxW uint8 (an HxWx3 input is grayed with Pillow first).
    min_area:   smallest region considered, as a fraction of the image (smaller ones are used only if
                there is nothing bigger).
    step:       a border edge counts as a step when the gray changes by more than this.
    values:     inclusive range of fill values to consider (DACON fills seen: 0 to ~100; the default
                considers all, the border test already rejects saturated skies).
    Returns an HxW bool mask, or ``(mask, Detection)`` with ``return_info=True``.
    """
    x = np.asarray(input_gray)
    if x.ndim == 3:
        x = np.asarray(Image.fromarray(np.ascontiguousarray(x)).convert("L"))
    if x.ndim != 2 or x.dtype != np.uint8:
        raise ValueError(f"expected an HxW uint8 image, got shape {x.shape} dtype {x.dtype}")
    h, w = x.shape
    lab, n = _components(x)
    size = np.bincount(lab.ravel(), minlength=n + 1)

    # Border edges between different components, counted for both sides, and whether each is a step.
    xi = x.astype(np.int16)
    edges = np.zeros(n + 1, np.int64)
    steps = np.zeros(n + 1, np.int64)
    interior = np.zeros((h, w), bool)
    interior[1:-1, 1:-1] = True
    for a, b, la, lb in (
        (xi[:, :-1], xi[:, 1:], lab[:, :-1], lab[:, 1:]),
        (xi[:-1, :], xi[1:, :], lab[:-1, :], lab[1:, :]),
    ):
        cut = la != lb
        big = np.abs(a - b) > step
        both = np.concatenate([la[cut], lb[cut]])
        edges += np.bincount(both, minlength=n + 1)
        both_step = np.concatenate([la[cut & big], lb[cut & big]])
        steps += np.bincount(both_step, minlength=n + 1)
    # Interior pixels: all four neighbours in the same component.
    inner = lab[1:-1, 1:-1]
    interior[1:-1, 1:-1] = (
        (inner == lab[:-2, 1:-1]) & (inner == lab[2:, 1:-1]) & (inner == lab[1:-1, :-2]) & (inner == lab[1:-1, 2:])
    )
    n_interior = np.bincount(lab[interior], minlength=n + 1)

    value_of = np.zeros(n + 1, np.int64)
    value_of[lab.ravel()] = x.ravel()

    ok = (value_of >= values[0]) & (value_of <= values[1])
    ok[0] = False
    cand = np.nonzero(ok & (size >= max(2, min_area * h * w)))[0]
    if cand.size == 0:
        cand = np.nonzero(ok & (size >= 2))[0]
    if cand.size == 0:
        mask = np.zeros((h, w), bool)
        return (mask, _NOTHING) if return_info else mask

    contrast = steps[cand] / np.maximum(edges[cand], 1)
    compact = n_interior[cand] / size[cand]
    score = size[cand] * compact * contrast**2
    order = np.argsort(score)[::-1]
    best = order[0]
    runner = score[order[1]] if order.size > 1 else 0.0
    mask = lab == cand[best]
    if not return_info:
        return mask
    top = tuple(
        (int(value_of[cand[i]]), int(size[cand[i]]), float(contrast[i]), float(compact[i]), float(score[i]))
        for i in order[:5]
    )
    info = Detection(
        value=int(value_of[cand[best]]),
        area=int(size[cand[best]]),
        contrast=float(contrast[best]),
        compactness=float(compact[best]),
        score=float(score[best]),
        confidence=float(1.0 - runner / score[best]) if score[best] > 0 else 0.0,
        candidates=top,
    )
    return mask, info
