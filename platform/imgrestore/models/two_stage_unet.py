"""``two_stage_unet``: inpaint the gray image first, then colourise it.

The design of the strongest public solutions to the task: the two sub-problems (fill the lost region; add
colour) are learnt by two U-Nets.

Stage 1, ``inpaint``: U-Net(prefilled gray, mask) -> a luma residual ``dY`` (zero-initialised head), used inside
the hole only. Stage 2, ``colorize``: U-Net(inpainted gray [, mask]) -> features for the chroma head. The
prefill, the composition in YCbCr and the heads are ``models.base.Restorer``'s.
``colorize_with_mask=True`` also feeds the mask to stage 2 (off by default: the colouriser then works on any
gray image).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import Restorer
from .layers import UNetBody, clamp01_st
from .registry import register_model


class TwoStageUNet(Restorer):
    def __init__(self, base_channels: int = 32, depth: int = 4, norm: str = "batch", act: str = "relu",
                 max_channels: int = 512, inpaint_base_channels: int | None = None,
                 inpaint_depth: int | None = None, colorize_with_mask: bool = False, **common):
        super().__init__(**common)
        self.config.update(base_channels=base_channels, depth=depth, norm=norm, act=act, max_channels=max_channels,
                           inpaint_base_channels=inpaint_base_channels, inpaint_depth=inpaint_depth,
                           colorize_with_mask=colorize_with_mask)
        in_base, in_depth = inpaint_base_channels or base_channels, inpaint_depth or depth
        self.multiple = 2 ** max(depth, in_depth)
        self.inpaint = UNetBody(2, in_base, in_depth, norm, act, max_channels)
        self.inpaint_head = nn.Conv2d(self.inpaint.out_channels, 1, 1)
        nn.init.zeros_(self.inpaint_head.weight), nn.init.zeros_(self.inpaint_head.bias)
        self.colorize = UNetBody(2 if colorize_with_mask else 1, base_channels, depth, norm, act, max_channels)
        self.build_heads(self.colorize.out_channels, act, luma_head=False)

    def features(self, x):
        gray, mask = x[:, :1], x[:, 1:]
        dy = self.inpaint_head(self.inpaint(x))
        inpainted = gray * (1 - mask) + clamp01_st(gray + dy) * mask
        feats = self.colorize(torch.cat([inpainted, mask], 1) if self.config["colorize_with_mask"] else inpainted)
        return dy, feats


@register_model
def two_stage_unet(**kwargs) -> TwoStageUNet:
    return TwoStageUNet(**kwargs)
