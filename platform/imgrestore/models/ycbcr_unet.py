"""``ycbcr_unet`` (alias ``lab_unet``): colour-space U-Net that keeps the known luminance.

Why YCbCr and not CIELab: the damaged input is Pillow's ``convert("L")``,
which is ITU-R BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` (Pillow's
integer form 299/587/114 per mille), computed on gamma-encoded sRGB values.
CIELab's L* is a non-linear function of *linear* RGB with different
weights, so "L from the input" in Lab would not reproduce the input gray.
YCbCr (BT.601, full range, as in JPEG) has exactly Pillow's luma as its Y
channel, so outside the mask the luminance is *known*: we copy it from the
input and the network only predicts chroma there.

Per pixel the network predicts three channels ``(dY, dCb, dCr)``::

    Y  = gray                       outside the mask (exact)
    Y  = clamp(gray + dY)           inside the mask (the lost region)
    Cb = 0.5 + dCb,  Cr = 0.5 + dCr everywhere
    rgb = clamp(ycbcr_to_rgb(Y, Cb, Cr))

The conversion is linear and exactly inverse to ``rgb_to_ycbcr`` (the
inverse matrix is computed, not rounded constants), so the output's luma
equals the input gray outside the mask, wherever the final RGB clamp does
not bite: ``Image.fromarray(out).convert("L")`` gives back the input there
up to uint8 rounding. Clamps are straight-through (``layers.clamp01_st``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .layers import UNetBody, check_inputs, fill_hole, clamp01_st, crop_to, pad_to_multiple
from .registry import register_model

# BT.601 full-range RGB -> (Y, Cb - 0.5, Cr - 0.5); rows are output channels.
RGB_TO_YCBCR = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [-0.168735891647856, -0.331264108352144, 0.5],
        [0.5, -0.418687589158345, -0.081312410841655],
    ],
    dtype=torch.float64,
)
YCBCR_TO_RGB = torch.linalg.inv(RGB_TO_YCBCR)
LUMA_WEIGHTS = RGB_TO_YCBCR[0].tolist()  # Pillow convert("L") weights


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) RGB in [0,1] -> (B,3,H,W) YCbCr in [0,1] (chroma centred at 0.5)."""
    m = RGB_TO_YCBCR.to(rgb)
    out = torch.einsum("oc,bchw->bohw", m, rgb)
    return out + torch.tensor([0.0, 0.5, 0.5], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`rgb_to_ycbcr` (no clamping)."""
    centred = ycbcr - torch.tensor([0.0, 0.5, 0.5], dtype=ycbcr.dtype, device=ycbcr.device).view(1, 3, 1, 1)
    return torch.einsum("oc,bchw->bohw", YCBCR_TO_RGB.to(ycbcr), centred)


def rgb_to_luma(rgb: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> (B,1,H,W) BT.601 luma, what Pillow's convert("L") computes."""
    return rgb_to_ycbcr(rgb)[:, :1]


class YCbCrUNet(nn.Module):
    def __init__(self, base_channels: int = 32, depth: int = 4, norm: str = "batch", act: str = "relu",
                 max_channels: int = 512, prefill: bool = True):
        super().__init__()
        self.config = dict(base_channels=base_channels, depth=depth, norm=norm, act=act, max_channels=max_channels, prefill=prefill)
        self.multiple = 2**depth
        self.body = UNetBody(2, 3, base_channels, depth, norm, act, max_channels)

    def forward(self, gray: torch.Tensor, mask: torch.Tensor, return_ycbcr: bool = False):
        check_inputs(gray, mask)
        gray = fill_hole(gray, mask) if self.config["prefill"] else gray
        x, size = pad_to_multiple(torch.cat([gray, mask], dim=1), self.multiple)
        raw = crop_to(self.body(x), size)
        y = gray * (1 - mask) + clamp01_st(gray + raw[:, :1]) * mask
        ycbcr = torch.cat([y, 0.5 + raw[:, 1:]], dim=1)
        rgb = clamp01_st(ycbcr_to_rgb(ycbcr))
        return (rgb, ycbcr) if return_ycbcr else rgb


@register_model(aliases=("lab_unet",))
def ycbcr_unet(**kwargs) -> YCbCrUNet:
    return YCbCrUNet(**kwargs)
