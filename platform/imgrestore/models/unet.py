"""``unet``: one U-Net, (prefilled gray, mask) -> features -> luma residual in the hole and chroma everywhere.

The simplest learned family. The prologue (classical prefill, padding to a multiple of ``2**depth``) and the
output (known gray copied, chroma in gamut) are ``models.base.Restorer``'s; this file is only the network.
"""

from __future__ import annotations

from .base import Restorer
from .layers import UNetBody
from .registry import register_model


class UNet(Restorer):
    def __init__(self, base_channels: int = 32, depth: int = 4, norm: str = "batch", act: str = "relu",
                 max_channels: int = 512, **common):
        super().__init__(**common)
        self.config.update(base_channels=base_channels, depth=depth, norm=norm, act=act, max_channels=max_channels)
        self.multiple = 2**depth
        self.body = UNetBody(2, base_channels, depth, norm, act, max_channels)
        self.build_heads(self.body.out_channels, act)

    def features(self, x):
        return self.body(x)


@register_model
def unet(**kwargs) -> UNet:
    return UNet(**kwargs)
