"""The DACON 236420 competition metric, and scoring of a whole prediction set.

Per image, on uint8 RGB arrays (HxWx3); a set's score is the plain mean over its images::

    score = 0.2 * S + 0.4 * M + 0.4 * C

S  ``skimage.metrics.structural_similarity(gt, pred, channel_axis=-1,
   data_range=pred.max() - pred.min())`` on the whole image (default 7-pixel window).
M  the same call on ``gt[mask > 0]`` and ``pred[mask > 0]``: the (N, 3) arrays of the damaged
   pixels in raster order. skimage treats each channel as a 1-D signal of length N, so the
   7-pixel window slides along that list; ``data_range`` still comes from the *whole* prediction.
C  hue-histogram correlation: both images to HSV with OpenCV (RGB2HSV), 180-bin histogram of the
   hue channel, ``cv2.normalize`` (L2), ``cv2.compareHist(..., HISTCMP_CORREL)``.

Wherever the official formula is defined, these functions return exactly its value. Where it is
not, they return a well-defined one instead of raising or giving nan:

* constant prediction (``pred.max() == pred.min()``): the official ``data_range`` is 0, which
  makes skimage divide 0 by 0 (nan) in flat windows. A range of 0 is replaced by 1, the smallest
  positive range of a uint8 image: a constant prediction of a constant truth then scores 1, of a
  textured truth about 0.
* fewer than 7 damaged pixels, including an empty mask: skimage raises (the 7-pixel window does
  not fit). M then falls back to the whole-image SSIM S (with a warning): with no damaged region
  to judge, the image is judged as a whole. Real competition masks have thousands of pixels.
* ``compareHist`` giving nan (not seen with OpenCV, which returns 1 for a zero-variance pair,
  but guarded): C = 0.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from imgrestore.data.io import read_gray, read_rgb
from imgrestore.data.masks import true_mask
from imgrestore.submission.rules import PredictionError, check_names, format_problems, read_member, read_prediction

WEIGHTS = {"ssim": 0.2, "masked_ssim": 0.4, "hist_sim": 0.4}
KEYS = ("score", "ssim", "masked_ssim", "hist_sim")
MIN_MASKED_PIXELS = 7  # skimage's default window; fewer pixels and SSIM is undefined


# ----------------------------------------------------------------------------- the metric


def _check_rgb(name: str, x: np.ndarray) -> None:
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {x.dtype}")
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"{name} must be HxWx3 (RGB), got shape {x.shape}")


def _data_range(pred: np.ndarray) -> int:
    return max(int(pred.max()) - int(pred.min()), 1)  # official: pred.max() - pred.min(); 0 -> 1


def hist_similarity(gt: np.ndarray, pred: np.ndarray) -> float:
    """C: correlation of the L2-normalised 180-bin hue histograms (nan -> 0)."""
    hists = []
    for x in (gt, pred):
        hue = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)[..., 0]
        h = cv2.calcHist([hue], [0], None, [180], [0, 180])
        hists.append(cv2.normalize(h, h))
    c = float(cv2.compareHist(hists[0], hists[1], cv2.HISTCMP_CORREL))
    return c if np.isfinite(c) else 0.0


def score_image(gt: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Score one prediction: dict(score, ssim, masked_ssim, hist_sim). ``mask > 0`` is damaged."""
    _check_rgb("gt", gt)
    _check_rgb("pred", pred)
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: gt {gt.shape} vs pred {pred.shape}")
    mask = np.asarray(mask)
    if mask.shape != gt.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image {gt.shape[:2]}")
    dr = _data_range(pred)
    s = float(structural_similarity(gt, pred, channel_axis=-1, data_range=dr))
    sel = mask > 0
    n = int(sel.sum())
    if n >= MIN_MASKED_PIXELS:
        m = float(structural_similarity(gt[sel], pred[sel], channel_axis=-1, data_range=dr))
    else:
        warnings.warn(f"only {n} masked pixels (< {MIN_MASKED_PIXELS}): masked_ssim = whole-image ssim",
                      stacklevel=2)
        m = s
    c = hist_similarity(gt, pred)
    out = {"ssim": s, "masked_ssim": m, "hist_sim": c}
    return {"score": sum(WEIGHTS[k] * v for k, v in out.items()), **out}


def mean_scores(results: Iterable[dict]) -> dict:
    """Mean of per-image result dicts: dict(score, ssim, masked_ssim, hist_sim, n)."""
    results = list(results)
    if not results:
        raise ValueError("no images to score")
    out = {k: float(np.mean([r[k] for r in results])) for k in KEYS}
    return {**out, "n": len(results)}


def score_batch(pairs: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict:
    """Mean score over (gt, pred, mask) triples: dict(score, ssim, masked_ssim, hist_sim, n)."""
    return mean_scores(score_image(gt, pred, mask) for gt, pred, mask in pairs)


# ----------------------------------------------------------------------------- prediction sets


class PredictionSet:
    """Predicted PNGs named as the inputs, from a folder or from a flat zip (no folders inside).

    Each image is checked by the submission rules (imgrestore.submission.rules) as it is read, so a set
    is scored only if a submission of it would be accepted, and is rejected with the same messages.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._zip = None
        if self.path.is_dir():
            self.container = "folder"
            self.names = [p.name for p in self.path.iterdir() if p.is_file()]
        elif self.path.is_file() and zipfile.is_zipfile(self.path):
            self.container = "zip"
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile as e:
                raise ValueError(f"{self.path}: not a valid zip file ({e})") from None
            self.names = self._zip.namelist()
        elif not self.path.exists():
            raise ValueError(f"{self.path}: prediction folder or zip not found")
        else:
            raise ValueError(f"{self.path}: not a folder or a zip file")

    def check_names(self, expected: Iterable[str]) -> None:
        """Raise ValueError if the set's names break the rules (a folder may hold other files too)."""
        problems = check_names(self.names, expected, self.container, allow_extra=self._zip is None)
        if problems:
            raise ValueError(format_problems(self.path, problems))

    def read_rgb(self, name: str, input_size: tuple[int, int]) -> np.ndarray:
        """The prediction `name` as HxWx3 uint8, checked against the rules for an input of `input_size`
        (width, height); otherwise a ValueError with the submission check's messages."""
        try:
            if self._zip is not None:
                data = read_member(self._zip, name)
            else:
                data = (self.path / name).read_bytes()
            return read_prediction(name, data, input_size)
        except PredictionError as e:
            raise ValueError(format_problems(self.path, e.problems)) from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> "PredictionSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_directory(pred: str | os.PathLike, input_dir: str | os.PathLike, gt_dir: str | os.PathLike
                   ) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (name, gt, pred, mask) for every gt PNG, checking names and sizes with clear errors."""
    input_dir, gt_dir = Path(input_dir), Path(gt_dir)
    for folder, what in ((gt_dir, "ground-truth"), (input_dir, "input")):
        if not folder.is_dir():
            raise ValueError(f"{folder}: {what} folder not found")
    names = sorted(p.name for p in gt_dir.glob("*.png"))
    if not names:
        raise ValueError(f"{gt_dir}: no .png ground-truth images")
    with PredictionSet(pred) as preds:
        preds.check_names(names)
        for name in names:
            gt = read_rgb(gt_dir / name)
            gray = read_gray(input_dir / name)
            if gray.shape != gt.shape[:2]:
                raise ValueError(f"{name}: input size {gray.shape[::-1]} != gt size {gt.shape[1::-1]}")
            # the rules compare the prediction with its input, which is the gt's size (checked above)
            p = preds.read_rgb(name, gray.shape[::-1])
            yield name, gt, p, true_mask(gray, gt)


def score_directory(pred: str | os.PathLike, input_dir: str | os.PathLike, gt_dir: str | os.PathLike,
                    progress: bool = False) -> tuple[list[dict], dict]:
    """Score a prediction set (folder or zip) against gt_dir, masks from input_dir.

    Returns (per-image rows: name, n_masked and the four scores; the mean summary with n).
    """
    items = iter_directory(pred, input_dir, gt_dir)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=len(list(Path(gt_dir).glob("*.png"))), desc="scoring", unit="img")
    rows = [{"name": name, "n_masked": int(mask.sum()), **score_image(gt, p, mask)}
            for name, gt, p, mask in items]
    return rows, mean_scores(rows)
