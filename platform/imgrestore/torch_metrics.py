"""The competition metric in torch, batched, on whatever device the tensors live (a GPU during validation).

    scores = score_batch_torch(gt_u8, pred_u8, mask)   # gt/pred (B,3,H,W) uint8, mask (B,1,H,W) or (B,H,W)
    scores["score"], scores["ssim"], scores["masked_ssim"], scores["hist_sim"]   # (B,) float64 tensors

Each value equals :func:`imgrestore.metrics.score_image` on the same image (tests/test_torch_metrics.py: S and M
within ~1e-10, C within ~1e-15 on crops of the bundled photos), with the same edge cases: a constant
prediction's data range 0 -> 1, fewer than 7 masked pixels -> M = S (with a warning), a nan C -> 0.

S and M reuse the training losses' exact ports of scikit-image's SSIM (:func:`imgrestore.losses.ssim`,
:func:`imgrestore.losses.masked_ssim_1d`), run in float64 by default: in float32 the windowed variances of a
low-contrast image lose digits (see ``losses._moments``). C is an exact port of OpenCV's 8-bit RGB->HSV hue
(fixed-point tables, checked on all 2^24 colours against cv2), a 180-bin histogram by ``bincount``, and
``compareHist(HISTCMP_CORREL)``'s formula. This module needs torch only (no cv2, skimage or numpy), so a
GPU node can score without the CPU metric's libraries.
"""
from __future__ import annotations

import warnings

import torch

from imgrestore.losses import masked_ssim_1d, ssim

Tensor = torch.Tensor
WEIGHTS = {"ssim": 0.2, "masked_ssim": 0.4, "hist_sim": 0.4}  # as imgrestore.metrics.WEIGHTS
MIN_MASKED_PIXELS = 7  # skimage's window; as imgrestore.metrics.MIN_MASKED_PIXELS
HUE_BINS = 180
_HSV_SHIFT = 12  # OpenCV's fixed-point shift in RGB2HSV_b
DBL_EPSILON = 2.220446049250313e-16  # compareHist's threshold on the variance product


# ----------------------------------------------------------------------------- C: hue histograms


def _hue_table(device) -> Tensor:
    """OpenCV's ``hdiv_table180``: round((180 << 12) / (6 i)), 0 for i = 0, as int64.

    OpenCV rounds with ``saturate_cast<int>(double)`` (to nearest, ties to even); 122880 / i is never exactly
    half way for 1 <= i <= 255, so integer round-half-up gives the same table.
    """
    i = torch.arange(256, dtype=torch.int64, device=device)
    num = (HUE_BINS << _HSV_SHIFT) // 6  # 122880, exact
    table = (2 * num + i) // (2 * i).clamp_min(1)
    table[0] = 0
    return table


def opencv_hue(rgb: Tensor) -> Tensor:
    """``cv2.cvtColor(x, cv2.COLOR_RGB2HSV)[..., 0]`` for uint8 (B,3,H,W) RGB: (B,H,W) uint8 hue in 0..179.

    Integer arithmetic exactly as OpenCV's RGB2HSV_b: the max channel picks the formula (ties: R, then G),
    ``h = (h * hdiv_table180[max - min] + 2048) >> 12`` (an arithmetic shift: floor), negatives + 180. Gray
    pixels (max == min) get 0.
    """
    if rgb.dtype != torch.uint8 or rgb.dim() != 4 or rgb.shape[1] != 3:
        raise ValueError(f"expected (B,3,H,W) uint8 RGB, got {tuple(rgb.shape)} {rgb.dtype}")
    r, g, b = rgb.to(torch.int64).unbind(1)
    vmax = torch.maximum(torch.maximum(r, g), b)
    diff = vmax - torch.minimum(torch.minimum(r, g), b)
    h = torch.where(vmax == r, g - b, torch.where(vmax == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _hue_table(rgb.device)[diff] + (1 << (_HSV_SHIFT - 1))) >> _HSV_SHIFT
    return torch.where(h < 0, h + HUE_BINS, h).to(torch.uint8)


def hue_histograms(rgb: Tensor) -> Tensor:
    """(B, 180) float64 hue counts: ``cv2.calcHist([hue], [0], None, [180], [0, 180])`` per image."""
    hue = opencv_hue(rgb).flatten(1).to(torch.int64)
    bsz = hue.shape[0]
    offset = torch.arange(bsz, device=hue.device)[:, None] * HUE_BINS  # one bincount for the whole batch
    counts = torch.bincount((hue + offset).flatten(), minlength=bsz * HUE_BINS)
    return counts.view(bsz, HUE_BINS).to(torch.float64)


def compare_hist_correl(h1: Tensor, h2: Tensor) -> Tensor:
    """Row-wise ``cv2.compareHist(h1, h2, HISTCMP_CORREL)``, OpenCV's own formula in float64.

    OpenCV returns 1 when the variance product is <= DBL_EPSILON (e.g. two flat histograms), not nan.
    """
    h1, h2 = h1.to(torch.float64), h2.to(torch.float64)
    scale = 1.0 / h1.shape[-1]
    s1, s2 = h1.sum(-1), h2.sum(-1)
    num = (h1 * h2).sum(-1) - s1 * s2 * scale
    denom2 = ((h1 * h1).sum(-1) - s1 * s1 * scale) * ((h2 * h2).sum(-1) - s2 * s2 * scale)
    out = num / denom2.abs().clamp_min(DBL_EPSILON).sqrt()
    return torch.where(denom2.abs() > DBL_EPSILON, out, torch.ones_like(out))


def hist_similarity(gt: Tensor, pred: Tensor) -> Tensor:
    """C per image (B,): correlation of the L2-normalised 180-bin hue histograms (nan -> 0)."""
    hists = []
    for x in (gt, pred):
        h = hue_histograms(x)
        # cv2.normalize (NORM_L2) on calcHist's float32 histogram: the norm in double, then a float32 scale
        # times the float32 counts, in float32; compareHist sums those values in double. Rounding alike gives
        # bit-identical histograms, so C agrees to ~1e-15.
        scale = (1.0 / h.norm(dim=-1, keepdim=True).clamp_min(1e-300)).to(torch.float32)
        hists.append((h.to(torch.float32) * scale).to(torch.float64))
    c = compare_hist_correl(*hists)
    return torch.nan_to_num(c, nan=0.0)


# ----------------------------------------------------------------------------- the whole score


def _check(gt: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
    for name, x in (("gt", gt), ("pred", pred)):
        if not torch.is_tensor(x) or x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"{name} must be a (B,3,H,W) uint8 tensor, got {shape} "
                             f"{getattr(x, 'dtype', '')}".rstrip())
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: gt {tuple(gt.shape)} vs pred {tuple(pred.shape)}")
    if mask.dim() == 3:
        mask = mask[:, None]
    if mask.shape != (gt.shape[0], 1, *gt.shape[2:]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match images {tuple(gt.shape)}")
    return (mask > 0).to(gt.device)


def data_range(pred: Tensor) -> Tensor:
    """Per image ``pred.max() - pred.min()`` on the uint8 scale, 0 -> 1 (as imgrestore.metrics), float64."""
    flat = pred.flatten(1)
    dr = (flat.amax(1).to(torch.int64) - flat.amin(1).to(torch.int64)).clamp_min(1)
    return dr.to(torch.float64)


@torch.no_grad()
def score_batch_torch(gt_u8: Tensor, pred_u8: Tensor, mask: Tensor, dtype: torch.dtype = torch.float64
                      ) -> dict[str, Tensor]:
    """The metric per image: dict(score, ssim, masked_ssim, hist_sim) of (B,) float64 tensors.

    gt_u8, pred_u8: (B,3,H,W) uint8 RGB on one device; mask: (B,1,H,W) or (B,H,W), damaged where > 0.
    ``dtype``: SSIM's working precision. float64 (default) matches the CPU metric to ~1e-10 (~1e-9 for a
    constant prediction). float32 is faster on GPUs with slow float64 (A10G, L4: 1/32 to 1/64 of the float32
    rate), within ~1e-5 on ordinary predictions but off by up to ~5e-2 on a (near) constant prediction,
    whose C2 term is then at float32's rounding (measured on CPU, see the tests).
    """
    m = _check(gt_u8, pred_u8, mask)
    x, y = pred_u8.to(dtype), gt_u8.to(dtype)  # x: the prediction (SSIM is symmetric; the range is pred's)
    dr = data_range(pred_u8).to(dtype)
    s = ssim(x, y, data_range=dr)
    n = m.flatten(1).sum(1)
    few = n < MIN_MASKED_PIXELS
    if bool(few.any()):
        warnings.warn(f"{int(few.sum())} image(s) with fewer than {MIN_MASKED_PIXELS} masked pixels: "
                      "masked_ssim = whole-image ssim for them", stacklevel=2)
    msk = masked_ssim_1d(x, y, m, data_range=dr)  # falls back to S itself where n < 7
    out = {"ssim": s.to(torch.float64), "masked_ssim": msk.to(torch.float64),
           "hist_sim": hist_similarity(gt_u8, pred_u8)}
    score = sum(WEIGHTS[k] * v for k, v in out.items())
    return {"score": score, **out}


def quantize(pred: Tensor) -> Tensor:
    """A model's [0,1] float output as the uint8 image a submission would hold (as training.data.to_uint8)."""
    return pred.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)


def from_numpy_images(images) -> Tensor:
    """A list of HxWx3 uint8 numpy arrays (same size) -> (B,3,H,W) uint8 tensor."""
    return torch.stack([torch.tensor(im) for im in images]).permute(0, 3, 1, 2).contiguous()  # copies: read-only ok
