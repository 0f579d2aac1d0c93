"""Colour: YCbCr with Pillow's luma, chroma kept inside the gamut, quantised chroma bins, exact uint8 luma.

Why YCbCr and not CIELab: the damaged input is Pillow's ``convert("L")``, i.e. ITU-R BT.601 luma
``Y = 0.299 R + 0.587 G + 0.114 B`` on gamma-encoded sRGB. That is exactly the Y of full-range YCbCr (JPEG's),
so outside the lost region Y is *known*: every model copies it from the input and predicts chroma only. CIELab's
L* is a non-linear function of linear RGB with other weights and would not give the input gray back.

Keeping the known gray exact needs two more things, both here:

* :func:`gamut_limit`: ``Y + chroma`` can leave the RGB cube, and clamping RGB then changes Y. Instead the chroma
  of each pixel is scaled down just enough to stay inside the cube at its Y (the hue is kept).
* :func:`lock_luma`: rounding R, G, B to uint8 moves Pillow's luma by up to about one level. Pillow computes
  ``L = (19595 R + 38470 G + 7471 B + 32768) >> 16`` and the weights sum to 65536, so adding ``d`` to all three
  channels moves L by exactly ``d``: one correction step makes it exact (a pixel pinned at 0 or 255 falls back to
  neutral gray, which is always exact).

:class:`ChromaBins` quantises (Cb, Cr) into a grid of classes for colourisation by classification (Zhang et al.
2016, "Colorful Image Colorization"): soft targets, class rebalancing weights from the training data, and
annealed-mean decoding.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# BT.601 full-range RGB -> (Y, Cb - 0.5, Cr - 0.5); rows are output channels.
RGB_TO_YCBCR = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [-0.168735891647856, -0.331264108352144, 0.5],
        [0.5, -0.418687589158345, -0.081312410841655],
    ],
    dtype=torch.float64,
)
YCBCR_TO_RGB = torch.linalg.inv(RGB_TO_YCBCR)  # computed, not rounded constants: an exact inverse
PILLOW_LUMA = (19595, 38470, 7471)  # Pillow's convert("L") in 16-bit fixed point (they sum to 65536)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) RGB in [0,1] -> (B,3,H,W) YCbCr in [0,1] (chroma centred at 0.5)."""
    out = torch.einsum("oc,bchw->bohw", RGB_TO_YCBCR.to(rgb), rgb)
    return out + torch.tensor([0.0, 0.5, 0.5], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`rgb_to_ycbcr` (no clamping)."""
    centred = ycbcr - torch.tensor([0.0, 0.5, 0.5], dtype=ycbcr.dtype, device=ycbcr.device).view(1, 3, 1, 1)
    return torch.einsum("oc,bchw->bohw", YCBCR_TO_RGB.to(ycbcr), centred)


def rgb_to_luma(rgb: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> (B,1,H,W) BT.601 luma, what Pillow's convert("L") computes (before rounding)."""
    return torch.einsum("c,bchw->bhw", RGB_TO_YCBCR[0].to(rgb), rgb).unsqueeze(1)


def rgb_to_chroma(rgb: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) RGB -> (B,2,H,W) (Cb, Cr) centred at 0."""
    return torch.einsum("oc,bchw->bohw", RGB_TO_YCBCR[1:].to(rgb), rgb)


def gamut_limit(y: torch.Tensor, chroma: torch.Tensor, margin: float = 1e-4) -> torch.Tensor:
    """Scale each pixel's chroma (B,2,H,W) down just enough that Y + chroma stays inside the RGB cube.

    RGB = Y + M·chroma per channel; for a channel moving up, Y + t·d <= 1 needs t <= (1 - Y) / d, moving down
    t <= Y / -d. The hue is kept, only the saturation shrinks; Y is untouched, so the luma stays the input's.
    """
    d = torch.einsum("oc,bchw->bohw", YCBCR_TO_RGB[:, 1:].to(chroma), chroma)  # (B,3,H,W) RGB offsets
    room_up, room_down = (1 - margin - y).clamp_min(0), (y - margin).clamp_min(0)
    eps = 1e-12
    limit = torch.where(d > eps, room_up / d.clamp_min(eps), torch.where(d < -eps, room_down / (-d).clamp_min(eps),
                                                                         torch.full_like(d, float("inf"))))
    t = limit.amin(1, keepdim=True).clamp(max=1.0)
    return chroma * t


def compose_rgb(y: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
    """(B,1,H,W) Y in [0,1] and (B,2,H,W) chroma -> RGB in [0,1] with the luma of ``y`` (chroma gamut-limited)."""
    ycbcr = torch.cat([y, gamut_limit(y, chroma) + 0.5], dim=1)
    return ycbcr_to_rgb(ycbcr).clamp(0, 1)  # the clamp only removes float rounding: the chroma is in gamut


# -- exact uint8 luma ----------------------------------------------------------------------------------------
def pillow_luma(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 integer RGB -> HxW Pillow convert("L") values, exactly (as int64)."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] * PILLOW_LUMA[0] + rgb[..., 1] * PILLOW_LUMA[1] + rgb[..., 2] * PILLOW_LUMA[2] + 32768) >> 16


def lock_luma(rgb: np.ndarray, gray: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """uint8 RGB whose Pillow gray equals ``gray`` wherever ``keep`` is true (the pixels outside the damage).

    Adds the luma error to all three channels (moves L by exactly that much); a pixel that would leave [0, 255]
    becomes neutral gray (``L(g, g, g) == g``). Pixels outside ``keep`` are returned as given.
    """
    out = rgb.astype(np.int64)
    target = gray.astype(np.int64)
    err = np.where(keep, target - pillow_luma(out), 0)
    out += err[..., None]
    bad = keep & ((out < 0).any(-1) | (out > 255).any(-1) | (pillow_luma(np.clip(out, 0, 255)) != target))
    out[bad] = target[bad, None]
    return np.clip(out, 0, 255).astype(np.uint8)



def lock_luma_torch(rgb_u8: torch.Tensor, gray_u8: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """:func:`lock_luma` on tensors, batched, on their device: (B,3,H,W) uint8 RGB -> the same, with Pillow's
    gray equal to ``gray_u8`` (B,H,W) wherever ``keep`` (B,H,W) is true. Bit-identical to the numpy version."""
    def luma(t):
        return (t[:, 0] * PILLOW_LUMA[0] + t[:, 1] * PILLOW_LUMA[1] + t[:, 2] * PILLOW_LUMA[2] + 32768) >> 16

    out, target = rgb_u8.long(), gray_u8.long()
    out = out + torch.where(keep, target - luma(out), torch.zeros_like(target))[:, None]
    bad = keep & ((out < 0).any(1) | (out > 255).any(1) | (luma(out.clamp(0, 255)) != target))
    out = torch.where(bad[:, None], target[:, None].expand_as(out), out)
    return out.clamp(0, 255).to(torch.uint8)

# -- chroma classes --------------------------------------------------------------------------------------------
class ChromaBins:
    """A square grid of (Cb, Cr) classes: ``per_axis`` bins over [-extent, extent] on each axis.

    Natural photos keep |Cb|, |Cr| well under 0.35 (on a 0..1 scale), so the default grid (14 x 14, bins
    0.05 wide) covers them; chroma outside is assigned to the edge bins.
    """

    def __init__(self, per_axis: int = 14, extent: float = 0.35):
        self.per_axis, self.extent = int(per_axis), float(extent)
        self.width = 2 * self.extent / self.per_axis
        axis = -self.extent + self.width * (torch.arange(self.per_axis, dtype=torch.float64) + 0.5)
        cb, cr = torch.meshgrid(axis, axis, indexing="ij")
        self.centres = torch.stack([cb.flatten(), cr.flatten()], 1).float()  # (Q, 2), Q = per_axis**2

    @property
    def n(self) -> int:
        return self.per_axis**2

    def soft_targets(self, chroma: torch.Tensor) -> torch.Tensor:
        """(B,2,h,w) chroma -> (B,Q,h,w) soft one-hot: bilinear weights over the 4 nearest bin centres."""
        pos = ((chroma + self.extent) / self.width - 0.5).clamp(0, self.per_axis - 1)  # continuous bin coords
        lo = pos.floor().clamp(max=self.per_axis - 2)
        frac = pos - lo
        lo = lo.long()
        b, _, h, w = chroma.shape
        out = chroma.new_zeros(b, self.n, h, w)
        for di in (0, 1):
            for dj in (0, 1):
                wi = frac[:, 0] if di else 1 - frac[:, 0]
                wj = frac[:, 1] if dj else 1 - frac[:, 1]
                idx = (lo[:, 0] + di) * self.per_axis + (lo[:, 1] + dj)
                out.scatter_add_(1, idx.unsqueeze(1), (wi * wj).unsqueeze(1))
        return out

    def rebalance_weights(self, counts: torch.Tensor, mix: float = 0.5, sigma_bins: float = 1.0) -> torch.Tensor:
        """Zhang et al.'s class weights: w ∝ 1 / ((1 - mix) p̃ + mix / Q), normalised so E_p̃[w] = 1.

        ``counts``: (Q,) soft class counts from training images; p̃ is their Gaussian-smoothed distribution.
        Rare (saturated) colours weigh more, so the classifier does not collapse onto the common desaturated bins.
        ``mix`` must be in (0, 1]: at 0 a class never seen would weigh infinitely (use no weights instead).
        """
        if not 0 < mix <= 1:
            raise ValueError(f"rebalancing mix must be in (0, 1], got {mix}")
        p = counts.double().view(1, 1, self.per_axis, self.per_axis)
        r = max(1, int(round(3 * sigma_bins)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma_bins) ** 2)
        k = (k[:, None] * k[None, :]) / k.sum() ** 2
        p = F.conv2d(F.pad(p, (r, r, r, r), mode="replicate"), k.view(1, 1, 2 * r + 1, 2 * r + 1)).flatten()
        p = p / p.sum().clamp_min(1e-12)
        w = 1.0 / ((1 - mix) * p + mix / self.n)
        return (w / (p * w).sum()).float()

    def decode(self, logits: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
        """(B,Q,h,w) logits -> (B,2,h,w) chroma: the annealed mean, softmax(logits / T) · centres.

        T = 1 is the mean (safe, desaturated), T -> 0 the mode (vivid, patchy); Zhang et al. use 0.38.
        """
        p = torch.softmax(logits.float() / max(temperature, 1e-3), dim=1)
        return torch.einsum("bqhw,qc->bchw", p, self.centres.to(p))

    def counts(self, chroma: torch.Tensor) -> torch.Tensor:
        """(Q,) soft class counts of a batch of chroma maps (B,2,h,w)."""
        return self.soft_targets(chroma).sum(dim=(0, 2, 3))
