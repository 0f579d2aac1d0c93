"""What every restoration model shares: prefill the hole, run a network, compose YCbCr with the known gray kept.

A family only defines its network, ``features(x) -> (B, C, H, W)`` on the padded (prefilled gray, mask) input,
and optionally its own luma residual (``two_stage_unet``). Everything else is here, once:

1. check the inputs, fill the hole classically (``models.prefill``; Telea by default);
2. pad to a multiple of the network's stride, run it, crop back; with ``net_size`` the network sees the
   prefilled image resized to ``net_size`` x ``net_size`` and its outputs are resized back (colour and a hole's
   fill are smooth; a CPU trains a 256 px model four times faster at ``net_size=128``) - the known gray stays
   at full resolution whatever the network's size;
3. luma: ``Y = gray`` outside the mask, exactly; inside, ``prefill + dY`` (``dY`` from a zero-initialised head,
   so an untrained model returns its prefill);
4. chroma (Cb, Cr) from a head at a quarter of the resolution (colour is smooth, and the head's cost drops
   sixteen-fold), upsampled bilinearly:

   * ``chroma="regression"``: two zero-initialised channels (an untrained model is gray);
   * ``chroma="classification"``: logits over ``ChromaBins`` classes, decoded by the annealed mean at
     ``chroma_temperature`` (Zhang et al. 2016); trained with the rebalanced cross-entropy in
     ``imgrestore.training.loop``. Regression of chroma collapses to a near-gray mean whose hue is noise;
     classes keep the most likely hue.

   then multiplied by ``chroma_gain`` (times ``hole_chroma`` inside the lost region, where a wrong colour
   also costs the metric's masked SSIM; both calibrated on validation, saved in the config) and scaled
   into the RGB gamut at the pixel's Y (``color.gamut_limit``), so RGB is never clamped and the luma
   stays the input's.

``forward(gray, mask)`` returns RGB (B,3,H,W) in [0,1]; ``forward(..., return_aux=True)`` returns a dict with
``rgb``, ``y`` (the luma, for the auxiliary gray loss), ``chroma`` (before gain and gamut) and, for
classification, ``chroma_logits`` (quarter resolution). At uint8, ``color.lock_luma`` makes the output's
Pillow gray equal the input exactly outside the mask (see ``imgrestore.submission.predict.restore``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .color import ChromaBins, compose_rgb
from .layers import check_inputs, clamp01_st, crop_to, make_act, pad_to_multiple
from .prefill import PREFILLS, prefill

CHROMA_MODES = ("regression", "classification", "none")
CHROMA_STRIDE = 4


class Restorer(nn.Module):
    """Base class; see the module doc. Subclasses set ``self.multiple`` and implement ``features``."""

    feature_channels: int = 0  # channels of ``features``; 0 for models without a network (classical restorers)

    def __init__(self, prefill: str = "telea", prefill_radius: int = 5, chroma: str = "regression",
                 chroma_bins: int = 14, chroma_temperature: float = 0.38, chroma_gain: float = 1.0,
                 hole_chroma: float = 1.0, net_size: int | None = None):
        super().__init__()
        if prefill not in PREFILLS:
            raise ValueError(f"prefill must be one of {PREFILLS}, got {prefill!r}")
        if chroma not in CHROMA_MODES:
            raise ValueError(f"chroma must be one of {CHROMA_MODES}, got {chroma!r}")
        # config: the constructor's keyword arguments (create_model(name, **config) rebuilds the model)
        self.config = dict(prefill=prefill, prefill_radius=int(prefill_radius), chroma=chroma,
                           chroma_bins=int(chroma_bins), chroma_temperature=float(chroma_temperature),
                           chroma_gain=float(chroma_gain), hole_chroma=float(hole_chroma), net_size=net_size)
        self.net_size = int(net_size) if net_size else None
        self.prefill_method, self.prefill_radius, self.chroma_mode = prefill, int(prefill_radius), chroma
        self.chroma_temperature, self._gain, self._hole = float(chroma_temperature), float(chroma_gain), float(hole_chroma)
        self.multiple = 1
        self.bins = ChromaBins(chroma_bins) if chroma == "classification" else None

    def build_heads(self, channels: int, act: str = "relu", luma_head: bool = True) -> None:
        """Luma residual and chroma heads on ``channels`` feature maps; last layers zero-initialised.
        ``luma_head=False``: the family's ``features`` returns its own luma residual."""
        self.feature_channels = channels
        self.y_head = nn.Conv2d(channels, 1, 1) if luma_head else None
        out = {"regression": 2, "classification": self.bins.n if self.bins else 0, "none": 0}[self.chroma_mode]
        self.chroma_head = None
        if out:
            last = nn.Conv2d(channels, out, 1)
            self.chroma_head = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), make_act(act), last)
            nn.init.zeros_(last.weight), nn.init.zeros_(last.bias)
        if self.y_head is not None:
            nn.init.zeros_(self.y_head.weight), nn.init.zeros_(self.y_head.bias)

    @property
    def chroma_gain(self) -> float:
        return self._gain

    @chroma_gain.setter
    def chroma_gain(self, gain: float) -> None:
        """Set after calibration; kept in ``config`` so a checkpoint carries it."""
        self._gain = float(gain)
        if "chroma_gain" in self.config:
            self.config["chroma_gain"] = self._gain

    @property
    def hole_chroma(self) -> float:
        return self._hole

    @hole_chroma.setter
    def hole_chroma(self, factor: float) -> None:
        self._hole = float(factor)
        if "hole_chroma" in self.config:
            self.config["hole_chroma"] = self._hole

    def features(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B,2,H,W) padded (prefilled gray, mask) -> features, or (luma residual, features)."""
        raise NotImplementedError

    def predict_chroma(self, feats: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Chroma (B,2,H,W) at full size, and the quarter-resolution logits for classification."""
        if self.chroma_head is None:
            return feats.new_zeros(feats.shape[0], 2, *size), None
        small = F.avg_pool2d(feats, CHROMA_STRIDE, ceil_mode=True)
        raw = self.chroma_head(small)
        logits = None
        if self.bins is not None:
            logits = raw
            raw = self.bins.decode(raw, self.chroma_temperature)
        chroma = F.interpolate(raw, size=feats.shape[-2:], mode="bilinear", align_corners=False)
        return crop_to(chroma, size), logits

    def chroma_scale(self, mask: torch.Tensor, gain: float | None = None, hole: float | None = None):
        """What decoding multiplies the chroma by: ``gain``, times ``hole`` inside the mask. Defaults: the
        calibrated values in eval mode, 1 while training (they are a decoding-time calibration; training
        always sees the raw chroma)."""
        if gain is None:
            gain = 1.0 if self.training else self.chroma_gain
        if hole is None:
            hole = 1.0 if self.training else self.hole_chroma
        return gain * (1 - mask * (1 - hole)) if hole != 1.0 else gain

    def compose(self, y: torch.Tensor, chroma: torch.Tensor, mask: torch.Tensor, gain: float | None = None,
                hole: float | None = None) -> torch.Tensor:
        """RGB with luma ``y`` and ``chroma`` scaled as ``chroma_scale`` says."""
        return compose_rgb(y, chroma * self.chroma_scale(mask, gain, hole))

    def forward(self, gray: torch.Tensor, mask: torch.Tensor, return_aux: bool = False,
                filled: torch.Tensor | None = None):
        """``filled``: this model's prefill of ``gray``, when it was computed already (the training loader's
        ``prefill.PrefillCollate`` computes it in its workers); None: computed here."""
        check_inputs(gray, mask)
        if filled is None:
            filled = prefill(gray, mask, self.prefill_method, self.prefill_radius)
        elif filled.shape != gray.shape:
            raise ValueError(f"filled must have the shape of gray {tuple(gray.shape)}, got {tuple(filled.shape)}")
        chroma, logits = gray.new_zeros(gray.shape[0], 2, *gray.shape[-2:]), None
        if self.feature_channels:
            full = gray.shape[-2:]
            x = torch.cat([filled, mask], dim=1)
            if self.net_size:
                x = F.interpolate(x, size=(self.net_size, self.net_size), mode="area")
            x, size = pad_to_multiple(x, self.multiple)
            out = self.features(x)
            dy, feats = out if isinstance(out, tuple) else (None, out)
            dy = crop_to(self.y_head(feats) if dy is None else dy, size)
            chroma, logits = self.predict_chroma(feats, size)
            if self.net_size:
                dy, chroma = (F.interpolate(t, size=full, mode="bilinear", align_corners=False) for t in (dy, chroma))
            filled = clamp01_st(filled + dy)
        y = gray * (1 - mask) + filled.float() * mask  # the known gray, exactly; the model's luma inside the hole
        chroma = chroma.float()
        with torch.autocast(gray.device.type, enabled=False):  # colour maths in fp32: bf16 would move the luma
            rgb = self.compose(y.float(), chroma, mask)
        if return_aux:
            return {"rgb": rgb, "y": y, "chroma": chroma, "chroma_logits": logits}
        return rgb
