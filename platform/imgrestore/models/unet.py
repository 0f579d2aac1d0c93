"""``unet``: one-stage U-Net, concat(gray, mask) -> RGB.

The simplest baseline: a single U-Net sees the damaged gray image and the
mask of the lost region and predicts the full colour image in one go.

Output (``output=``):
  * ``"residual"`` (default): RGB = clamp(gray + head), each of R, G, B starts
    from the input gray; the clamp is straight-through (see
    ``layers.clamp01_st``), so values are always in [0, 1].
  * ``"sigmoid"``: RGB = sigmoid(head).

Any H, W is accepted: the input is reflect-padded to a multiple of
``2**depth`` and the output cropped back.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .layers import UNetBody, apply_output, check_inputs, fill_hole, crop_to, pad_to_multiple
from .registry import register_model


class UNet(nn.Module):
    def __init__(self, base_channels: int = 32, depth: int = 4, norm: str = "batch", act: str = "relu",
                 max_channels: int = 512, output: str = "residual", prefill: bool = True):
        super().__init__()
        self.config = dict(base_channels=base_channels, depth=depth, norm=norm, act=act,
                           max_channels=max_channels, output=output, prefill=prefill)
        apply_output(torch.zeros(1), torch.zeros(1), output)  # validate early
        self.output = output
        self.multiple = 2**depth
        self.body = UNetBody(2, 3, base_channels, depth, norm, act, max_channels)

    def forward(self, gray: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        check_inputs(gray, mask)
        gray = fill_hole(gray, mask) if self.config["prefill"] else gray
        x, size = pad_to_multiple(torch.cat([gray, mask], dim=1), self.multiple)
        raw = crop_to(self.body(x), size)
        return apply_output(raw, gray, self.output)


@register_model
def unet(**kwargs) -> UNet:
    return UNet(**kwargs)
