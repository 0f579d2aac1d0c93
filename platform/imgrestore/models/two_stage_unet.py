"""``two_stage_unet``: inpaint the gray image first, then colourise it.

This is the design of the strongest public solutions to the task: the two
sub-problems (fill the lost region; add colour) are learnt by two U-Nets.

Stage 1, ``inpaint``: U-Net(gray, mask) -> gray residual ``r``, applied only
inside the mask, so known pixels are passed through untouched::

    gray_inpainted = clamp(gray * (1 - mask) + (gray + r) * mask)

Stage 2, ``colorize``: U-Net(gray_inpainted) -> RGB residual ``d``::

    rgb = clamp(gray_inpainted + d)        # output="residual" (default)
    rgb = sigmoid(d)                       # output="sigmoid"

Clamps are straight-through (``layers.clamp01_st``): values in [0, 1],
gradients never cut off. ``colorize_with_mask=True`` also feeds the mask to
stage 2 (off by default: the colouriser then works on any gray image, which
lets it be pre-trained on undamaged images).

``forward(gray, mask, return_aux=True)`` returns ``(rgb, gray_inpainted)``
so the trainer can add an auxiliary loss on stage 1, e.g. L1 between
``gray_inpainted`` and the luma of the target.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .layers import UNetBody, apply_output, check_inputs, fill_hole, clamp01_st, crop_to, pad_to_multiple
from .registry import register_model


class TwoStageUNet(nn.Module):
    def __init__(self, base_channels: int = 32, depth: int = 4, norm: str = "batch", act: str = "relu",
                 max_channels: int = 512, output: str = "residual",
                 inpaint_base_channels: int | None = None, inpaint_depth: int | None = None,
                 colorize_with_mask: bool = False, prefill: bool = True):
        super().__init__()
        self.config = dict(base_channels=base_channels, depth=depth, norm=norm, act=act,
                           max_channels=max_channels, output=output,
                           inpaint_base_channels=inpaint_base_channels, inpaint_depth=inpaint_depth,
                           colorize_with_mask=colorize_with_mask, prefill=prefill)
        apply_output(torch.zeros(1), torch.zeros(1), output)  # validate early
        self.output = output
        self.colorize_with_mask = colorize_with_mask
        in_base = inpaint_base_channels or base_channels
        in_depth = inpaint_depth or depth
        self.multiple = 2 ** max(depth, in_depth)
        self.inpaint = UNetBody(2, 1, in_base, in_depth, norm, act, max_channels)
        self.colorize = UNetBody(2 if colorize_with_mask else 1, 3, base_channels, depth, norm, act, max_channels)

    def inpaint_gray(self, gray: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Stage 1 alone on already padded inputs: the inpainted gray image."""
        residual = self.inpaint(torch.cat([gray, mask], dim=1))
        return clamp01_st(gray * (1 - mask) + (gray + residual) * mask)

    def forward(self, gray: torch.Tensor, mask: torch.Tensor, return_aux: bool = False):
        check_inputs(gray, mask)
        gray = fill_hole(gray, mask) if self.config["prefill"] else gray
        x, size = pad_to_multiple(torch.cat([gray, mask], dim=1), self.multiple)
        g, m = x[:, :1], x[:, 1:]
        g_inp = self.inpaint_gray(g, m)
        raw = self.colorize(torch.cat([g_inp, m], dim=1) if self.colorize_with_mask else g_inp)
        rgb = crop_to(apply_output(raw, g_inp, self.output), size)
        if return_aux:
            return rgb, crop_to(g_inp, size)
        return rgb


@register_model
def two_stage_unet(**kwargs) -> TwoStageUNet:
    return TwoStageUNet(**kwargs)
