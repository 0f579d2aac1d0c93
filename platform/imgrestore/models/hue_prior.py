"""Hue-prior decoding: steer a restored image's hue histogram towards the training photos' mean, with the
smallest uint8 changes that keep every pixel's Pillow gray.

Why: the metric's hue term C is the correlation of the 180-bin OpenCV hue histograms of the whole image, and
every pixel counts whatever its saturation. What maximises the *expected* correlation when the hues are
uncertain is the expected (standardised) histogram, and on held-out photos the trained models' own hue
histograms predict the truth's worse than the plain mean histogram of the training truths does (C 0.16-0.21
against 0.31, docs/benchmarks.md "Hue-prior decoding"). A faint chroma of a few levels is enough to give a pixel
any hue, so the histogram can be moved towards that mean while the picture barely changes.

How: every free pixel (the whole image; outside the lost region only when ``steer_lost`` is False) may take any
uint8 colour within ``max_step`` levels per channel of the neutral gray of its own Pillow luma *that has the same
Pillow luma* (so the known gray stays exact), or keep its own colour. Moving it to a hue bin costs the squared RGB
distance to the nearest such colour in that bin. Which pixels go to which bins is an entropic optimal transport
(Sinkhorn; Cuturi 2013) from the pixels (grouped by colour) to the target histogram minus what the fixed pixels
already hold; each pixel then draws its bin from its row of the plan (identical colours drawing one argmax would
pile into one bin), by inverse-CDF sampling with one spatially smooth random field (seeded), so that neighbours
draw alike: a faint smooth tint, not colour grain (on 34 held-out images a 4 px field gave +0.003 over independent
draws, S 0.833 vs 0.829; a 16 px field raises S by ~0.01 but costs as much C: +0.0015 ± 0.0008 on the benchmark's
held-out photos, -0.0013 ± 0.0007 on 100 of its training images, so 4 px stays). The lost region is steered too
(``steer_lost``): a restorer's gray hole is a block of hue-0 pixels that the other pixels cannot dilute. FSR
decoded, steering the hole as well: +0.012 ± 0.005 on 100 training images (prior fitted on the other 300) and
+0.011 ± 0.005 on the 100 held-out photos (C +0.04, M -0.01; docs/benchmarks.md, "Hue-prior decoding: the lost
region steered too"). A prior saved before ``steer_lost`` was stored keeps the lost region, as it did when its
champion was chosen.

``HuePrior``: ``fit`` on training truths, ``transform`` a restored image. ``benchmarks/hue_prior_decoding.py``
shows it lifts the classical restorers as much as the trained models, so a search offers it to every restorer
alike, the classical baselines included, and each keeps it only where it scores higher on validation
(``imgrestore.tuning.decoding``, config key ``hue_prior``): the champion's margin over the classical restorers
is never the decoding's.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable

import cv2
import numpy as np
import torch

from .color import pillow_luma

BINS = 180
SMOOTH = 4.0  # px: the Gaussian blur of the field that couples neighbouring pixels' draws (_draw)
LEGACY_STEER_LOST = False  # a prior saved before `steer_lost` was stored kept the lost region (decodes as chosen)
_KEY = 4096  # cost * _KEY + candidate index packs a (cost, argmin) pair into one int64 for scatter_reduce


def hue_histogram(rgb: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """The metric's 180-bin OpenCV hue histogram (float64 counts) of a uint8 RGB image, or of its pixels
    where ``where`` is True."""
    hue = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)[..., 0]
    if where is not None:
        hue = hue[where]
    return np.bincount(hue.ravel(), minlength=BINS).astype(np.float64)


def hue_histogram_bins(colours: np.ndarray) -> np.ndarray:
    """OpenCV hue bin of each of (N, 3) uint8-valued colours."""
    return cv2.cvtColor(colours[None].astype(np.uint8), cv2.COLOR_RGB2HSV)[0, :, 0].astype(np.int64)


@lru_cache(maxsize=None)
def _offsets(max_step: int) -> np.ndarray:
    r = np.arange(-max_step, max_step + 1)
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


@lru_cache(maxsize=4096)
def same_luma_colours(luma: int, max_step: int) -> tuple[np.ndarray, np.ndarray]:
    """Every uint8 RGB within ``max_step`` of (luma, luma, luma) whose Pillow luma is ``luma``, and its OpenCV
    hue bin: ((K, 3) int64, (K,) int64)."""
    c = _offsets(max_step) + luma
    c = c[((c >= 0) & (c <= 255)).all(1)]
    c = c[pillow_luma(c) == luma]
    return c, hue_histogram_bins(c)


def _bin_costs(colours: np.ndarray, max_step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For U distinct uint8 colours: (U, 180) the squared distance to the nearest same-luma colour in each hue
    bin (inf where none), and (U, 180, 3) that colour. A colour's own bin always costs 0 (itself)."""
    U = len(colours)
    cost = torch.full((U, BINS), float("inf"), dtype=torch.float32)
    best = torch.zeros((U, BINS, 3), dtype=torch.uint8)
    luma = pillow_luma(colours)
    for level in np.unique(luma):
        rows = np.nonzero(luma == level)[0]
        cand, hue = same_luma_colours(int(level), max_step)
        d = torch.from_numpy(((colours[rows, None, :] - cand[None]) ** 2).sum(-1))  # (u, K) int64
        key = d * _KEY + torch.arange(len(cand))
        packed = torch.full((len(rows), BINS), torch.iinfo(torch.int64).max, dtype=torch.int64)
        packed.scatter_reduce_(1, torch.from_numpy(hue).expand(len(rows), -1), key, reduce="amin")
        ok = packed != torch.iinfo(torch.int64).max
        r = torch.from_numpy(rows)
        sub = torch.full((len(rows), BINS), float("inf"))
        sub[ok] = (packed[ok] // _KEY).float()
        cost[r] = sub
        idx = (packed % _KEY).clamp(max=len(cand) - 1)
        best[r] = torch.from_numpy(cand)[idx].to(torch.uint8)
    own = torch.from_numpy(hue_histogram_bins(colours))
    cost[torch.arange(U), own] = 0.0
    best[torch.arange(U), own] = torch.from_numpy(colours.astype(np.uint8))
    return cost, best


def _sinkhorn(cost: torch.Tensor, weights: torch.Tensor, target: torch.Tensor, eps: float, iters: int):
    """Entropic transport plan rows (U, 180), each row a distribution over bins, with row masses ``weights`` and
    column masses ``target`` (same total). In the kernel domain in float64, each iteration two matrix-vector
    products (3x faster than log-sum-exp on a coloured image's ~30k groups). A move so costly that exp(-cost / eps)
    underflows (over ~1400 at eps 2: a strongly coloured pixel moved far from its colour) counts as unreachable,
    like an inf cost: the pixel keeps to nearer bins. A colour's own bin costs 0, so no row is ever empty; a bin
    no colour can reach gets probability 0."""
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    k = torch.exp(-cost.double() / eps)
    w, t = weights.double(), target.double()
    t = t.clamp_min(1e-12 * float(t.sum()))  # a bin the target leaves empty stays reachable: no all-zero plan row
    v = torch.ones(BINS, dtype=torch.float64)
    for _ in range(iters):
        u = w / (k @ v).clamp_min(1e-300)
        col = k.T @ u
        v = torch.where(col > 0, t / col.clamp_min(1e-300), 0.0)  # a bin no colour can reach stays empty
    plan = k * v
    return (plan / plan.sum(1, keepdim=True).clamp_min(1e-300)).float()


def steer_hues(rgb: np.ndarray, target: np.ndarray, free: np.ndarray, *, max_step: int = 12, eps: float = 2.0,
               iters: int = 60, seed: int = 0, smooth: float = SMOOTH) -> np.ndarray:
    """``rgb`` (H,W,3 uint8) with the pixels where ``free`` is True recoloured so that the whole image's hue
    histogram comes close to ``target`` (180 non-negative weights); every pixel keeps its Pillow luma exactly;
    the others are untouched. See the module doc."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be HxWx3 uint8, got {rgb.dtype} {rgb.shape}")
    target = np.asarray(target, dtype=np.float64)
    if target.shape != (BINS,) or (target < 0).any() or not target.sum() > 0:
        raise ValueError(f"target must be {BINS} non-negative weights with a positive sum")
    free = np.asarray(free, dtype=bool)
    if free.shape != rgb.shape[:2]:
        raise ValueError(f"free mask shape {free.shape} does not match image {rgb.shape[:2]}")
    n_free = int(free.sum())
    if n_free == 0:
        return rgb.copy()
    # what the free pixels should hold: the target at the image's size minus the fixed pixels' own hues
    want = np.clip(target / target.sum() * free.size - hue_histogram(rgb, ~free), 0, None)
    if not want.sum() > 0:
        return rgb.copy()
    colours, col_of = np.unique(rgb[free].astype(np.int64), axis=0, return_inverse=True)
    col_of = col_of.ravel()
    cost, best = _bin_costs(colours, max_step)
    # a change costs less where the picture has texture: SSIM's structure term divides by the local variance
    level = _texture_levels(rgb)[free]
    groups, inverse, counts = np.unique(np.stack([col_of, level], 1), axis=0, return_inverse=True,
                                        return_counts=True)
    inverse = torch.from_numpy(inverse.ravel())
    group_cost = cost[torch.from_numpy(groups[:, 0])] * torch.from_numpy(TEXTURE_WEIGHTS[groups[:, 1]]).float()[:, None]
    want_t = torch.from_numpy(want / want.sum() * n_free).float()
    plan = _sinkhorn(group_cost, torch.from_numpy(counts).float(), want_t, eps, iters)
    pick = _draw(plan, inverse, free, seed, smooth)
    out = rgb.copy()
    out[free] = best[torch.from_numpy(col_of), pick].numpy()
    return out


def _draw(plan: torch.Tensor, inverse: torch.Tensor, free: np.ndarray, seed: int,
          smooth: float = SMOOTH) -> torch.Tensor:
    """Each free pixel's bin, drawn from its group's row of the plan by inverse-CDF sampling with a spatially
    smooth uniform field (blurred noise, ranked): neighbours get the same or nearby bins, so the change is a
    faint smooth tint rather than grain (grain costs SSIM's structure term in flat areas; a smooth tint barely
    moves its mean term)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(free.shape)
    if smooth > 0:
        noise = cv2.GaussianBlur(noise, (0, 0), smooth)
    field = noise[free]
    u = (np.argsort(np.argsort(field, kind="stable"), kind="stable") + 0.5) / field.size  # uniform on (0, 1)
    cdf = torch.cumsum(plan[inverse], dim=1)
    cdf = cdf / cdf[:, -1:]
    return torch.searchsorted(cdf, torch.from_numpy(u).float()[:, None]).clamp(max=BINS - 1)[:, 0]


SSIM_C2 = (0.03 * 255) ** 2
TEXTURE_EDGES = np.array([0.25, 0.5, 0.75])       # of C2 / (local variance + C2)
TEXTURE_WEIGHTS = np.array([0.125, 0.375, 0.625, 0.875])


def _texture_levels(rgb: np.ndarray) -> np.ndarray:
    """(H,W) int: which of four levels of SSIM's sensitivity C2 / (7x7 luma variance + C2) a pixel has."""
    y = pillow_luma(rgb).astype(np.float64)
    mean = cv2.blur(y, (7, 7))
    var = np.maximum(cv2.blur(y * y, (7, 7)) - mean * mean, 0)
    return np.digitize(SSIM_C2 / (var + SSIM_C2), TEXTURE_EDGES)


def standardised(hist: np.ndarray) -> np.ndarray:
    """``hist`` centred and scaled to unit norm: its correlation with any histogram is a dot product with it."""
    centred = np.asarray(hist, dtype=np.float64) - np.mean(hist)
    norm = np.linalg.norm(centred)
    return centred / norm if norm > 0 else centred


class HuePrior:
    """The training truths' mean hue histogram, and the decoding that steers restorations towards it.

    ``fit(images)``: the mean of each image's *standardised* 180-bin hue histogram (centred, unit norm). The
    metric's C of a histogram h against a truth T is <std(h), std(T)>, so this mean is the histogram with the
    highest mean C over the images fitted on (on the benchmark's 100 held-out photos it correlates 0.325 with
    their truths, the mean of sum-normalised histograms 0.313: peaked histograms weigh less).
    ``transform(rgb, mask)``: the restored image with its hues steered (``steer_hues``): everywhere, or outside
    ``mask`` (the lost region) only when ``steer_lost`` is False.
    """

    def __init__(self, histogram: Iterable[float] | None = None, max_step: int = 12, eps: float = 2.0,
                 iters: int = 60, n_images: int | None = None, smooth: float = SMOOTH, steer_lost: bool = True):
        self.n_images = n_images  # how many truths it was fitted on (lineage, in the checkpoint)
        self.histogram = None if histogram is None else np.asarray(list(histogram), dtype=np.float64)
        if self.histogram is not None and self.histogram.shape != (BINS,):
            raise ValueError(f"a hue prior has {BINS} bins, got {self.histogram.shape}")
        self.max_step, self.eps, self.iters = int(max_step), float(eps), int(iters)
        self.smooth, self.steer_lost = float(smooth), bool(steer_lost)

    def fit(self, images: Iterable[np.ndarray]) -> "HuePrior":
        hists = [standardised(h) for h in map(hue_histogram, images)]
        if not hists:
            raise ValueError("no images to fit a hue prior on")
        mean = np.mean(hists, axis=0)
        self.histogram = mean - mean.min()  # the same correlation with anything, and a valid (>= 0) target
        self.n_images = len(hists)
        return self

    def transform(self, rgb: np.ndarray, mask: np.ndarray, seed: int = 0) -> np.ndarray:
        if self.histogram is None:
            raise RuntimeError("HuePrior.transform before fit")
        mask = np.asarray(mask, dtype=bool)
        free = np.ones_like(mask) if self.steer_lost else ~mask
        return steer_hues(rgb, self.histogram, free, max_step=self.max_step, eps=self.eps, iters=self.iters,
                          seed=seed, smooth=self.smooth)

    def to_config(self) -> dict:
        return {"histogram": [round(float(x), 8) for x in self.histogram], "max_step": self.max_step,
                "eps": self.eps, "iters": self.iters, "n_images": self.n_images, "smooth": self.smooth,
                "steer_lost": self.steer_lost}

    @classmethod
    def from_config(cls, cfg: dict | None) -> "HuePrior | None":
        return None if not cfg else cls(cfg["histogram"], cfg.get("max_step", 12), cfg.get("eps", 2.0),
                                        cfg.get("iters", 60), cfg.get("n_images"),
                                        cfg.get("smooth", SMOOTH), cfg.get("steer_lost", LEGACY_STEER_LOST))
