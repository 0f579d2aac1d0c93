"""Small building blocks shared by the model families.

Everything here is plain ``torch.nn``: normalisation/activation factories,
the U-Net double-conv block, a generic U-Net body, padding helpers for
arbitrary image sizes, and a straight-through clamp used by residual heads.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

NORMS = ("batch", "instance", "group", "none")
ACTS = ("relu", "silu", "gelu", "leaky_relu")


def make_norm(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if norm == "group":
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def make_act(act: str) -> nn.Module:
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "silu":
        return nn.SiLU(inplace=True)
    if act == "gelu":
        return nn.GELU()
    if act == "leaky_relu":
        return nn.LeakyReLU(0.2, inplace=True)
    raise ValueError(f"act must be one of {ACTS}, got {act!r}")


class ConvBlock(nn.Sequential):
    """(3x3 conv -> norm -> act) x 2, the classic U-Net block."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", act: str = "relu"):
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias), make_norm(norm, out_ch), make_act(act),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=bias), make_norm(norm, out_ch), make_act(act),
        )


class UpBlock(nn.Module):
    """Bilinear x2 upsample (no checkerboard artefacts) -> concat skip -> ConvBlock."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, norm: str = "batch", act: str = "relu"):
        super().__init__()
        self.block = ConvBlock(in_ch + skip_ch, out_ch, norm, act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else [2 * s for s in x.shape[-2:]]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.block(x)


def unet_channels(base_channels: int, depth: int, max_channels: int) -> list[int]:
    """Channels of levels 0..depth: base * 2**i, capped at ``max_channels``."""
    return [min(base_channels * 2**i, max_channels) for i in range(depth + 1)]


class UNetBody(nn.Module):
    """Plain U-Net: ``depth`` max-pool downsamplings, bilinear upsampling.

    Input (B, in_ch, H, W) with H, W multiples of 2**depth -> (B, base_channels, H, W) features of the last
    decoder block (``out_channels``); the heads that read them live in ``models.base.Restorer``.
    """

    def __init__(self, in_ch: int, base_channels: int = 32, depth: int = 4,
                 norm: str = "batch", act: str = "relu", max_channels: int = 512):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        ch = unet_channels(base_channels, depth, max_channels)
        self.depth = depth
        self.encoders = nn.ModuleList(
            [ConvBlock(in_ch, ch[0], norm, act)] + [ConvBlock(ch[i - 1], ch[i], norm, act) for i in range(1, depth + 1)]
        )
        self.decoders = nn.ModuleList(
            [UpBlock(ch[i + 1], ch[i], ch[i], norm, act) for i in reversed(range(depth))]
        )
        self.out_channels = ch[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for dec in self.decoders:
            x = dec(x, skips.pop())
        return x


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H, W (bottom/right) up to a multiple; reflect where possible, else replicate.

    Returns the padded tensor and the original (H, W) for :func:`crop_to`.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x[..., : size[0], : size[1]]


def clamp01_st(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] in the forward pass, identity gradient in the backward pass.

    A plain clamp gives zero gradient to any pixel that overshoots, so a pixel
    predicted at 1.2 whose target is 0.9 would never come back; the
    straight-through version keeps pulling it towards the target.
    """
    return x + (x.clamp(0.0, 1.0) - x).detach()


def check_inputs(gray: torch.Tensor, mask: torch.Tensor) -> None:
    if gray.dim() != 4 or gray.shape[1] != 1:
        raise ValueError(f"gray must be (B,1,H,W), got {tuple(gray.shape)}")
    if mask.shape != gray.shape:
        raise ValueError(f"mask must have the shape of gray {tuple(gray.shape)}, got {tuple(mask.shape)}")
