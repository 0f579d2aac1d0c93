"""Filling the lost region before any network sees it: classical inpainting.

The lost region arrives as one flat gray value (anything from 0 to ~100) that tells a network nothing, and a
residual head that starts from it starts far from the truth. So every model first fills the hole with a
classical inpainting and learns a residual on top (zero-initialised: an untrained model returns this fill).

Methods (``PREFILLS``):

* ``none``: the flat fill value as given.
* ``pushpull``: a smooth pyramid average of the known pixels around the hole (differentiable, parameter-free;
  blurs: it continues no structure into the hole).
* ``telea``, ``ns``: OpenCV's ``cv2.inpaint`` (Telea's fast marching method; Navier-Stokes), which continue
  edges and gradients into the hole. A few ms per 256 px image on one core.
* ``fsr``: OpenCV's frequency-selective reconstruction (``cv2.xphoto.inpaint``, FSR_FAST; opencv-contrib).
  The best single one of these on real photos, but ~0.3 s per 256 px image: a classical restorer and a baseline
  more than a per-step prefill.
* ``fsr_biharmonic``: the mean of FSR's fill and scikit-image's biharmonic inpainting
  (``skimage.restoration.inpaint_biharmonic``, a smooth fill, ~40 ms at 256 px). The two err differently (FSR
  continues texture that may not be there, the biharmonic fill has none), and the masked SSIM rewards their
  mean: +0.004-0.005 over FSR alone, M +0.009-0.013, on the benchmark's 100 held-out and 100 training images
  (docs/benchmarks.md, "A classical restorer: the mean of two inpaintings").

OpenCV works on uint8 images on the CPU, outside autograd: the fill is an input, not something to learn through.
Known pixels are returned exactly as given. The images of a batch are filled in parallel threads (OpenCV
releases the GIL), as many as torch's CPU threads. Training goes further: ``PrefillCollate`` fills each batch
where the DataLoader assembles it and the model takes the fill as an input (``Restorer.forward(filled=)``):
with ``num_workers`` > 0 that is in the worker processes, beside the GPU's step instead of inside it (there,
one thread at a time, it was 154 ms of a ~230 ms step at 512 px, batch 8, on an H200: docs/benchmarks.md,
"GPU"); with ``num_workers: 0`` it still runs in the training process, between steps.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from skimage.restoration import inpaint_biharmonic
from torch.utils.data import default_collate

PREFILLS = ("none", "pushpull", "telea", "ns", "fsr", "fsr_biharmonic")
CPU_PREFILLS = ("telea", "ns", "fsr", "fsr_biharmonic")  # OpenCV on the CPU: worth moving off a GPU's training step


def push_pull(gray: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Push-pull fill: masked pixels get a smooth estimate from the known pixels around them.

    Pull: average known values and their weights down an image pyramid; push: from the coarsest level up, keep
    each level's own average where it has known pixels and blend in the upsampled coarser estimate where it has
    few.
    """
    known = 1 - mask
    values, weights = [gray * known], [known]
    while min(values[-1].shape[-2:]) > 1:
        values.append(F.avg_pool2d(values[-1], 2, ceil_mode=True))
        weights.append(F.avg_pool2d(weights[-1], 2, ceil_mode=True))
    filled = values[-1] / weights[-1].clamp_min(1e-8)
    for v, w in zip(reversed(values[:-1]), reversed(weights[:-1])):
        up = F.interpolate(filled, size=v.shape[-2:], mode="bilinear", align_corners=False)
        filled = w * (v / w.clamp_min(1e-8)) + (1 - w) * up
    return gray * known + filled * mask


def inpaint_uint8(gray: np.ndarray, mask: np.ndarray, method: str, radius: int = 5) -> np.ndarray:
    """Classical inpainting of one HxW uint8 image; ``mask`` HxW, nonzero = lost. Returns HxW uint8."""
    m = (np.asarray(mask) > 0).astype(np.uint8)
    if not m.any():
        return gray.copy()
    if method == "telea":
        return cv2.inpaint(gray, m * 255, radius, cv2.INPAINT_TELEA)
    if method == "ns":
        return cv2.inpaint(gray, m * 255, radius, cv2.INPAINT_NS)
    if method == "fsr":
        if not hasattr(cv2, "xphoto"):
            raise RuntimeError("prefill 'fsr' needs OpenCV's contrib modules (cv2.xphoto): "
                               "pip install opencv-contrib-python-headless")
        out = np.zeros_like(gray)
        cv2.xphoto.inpaint(gray, (1 - m) * 255, out, cv2.xphoto.INPAINT_FSR_FAST)  # its mask marks KNOWN pixels
        return out
    if method == "fsr_biharmonic":
        fsr = inpaint_uint8(gray, mask, "fsr", radius).astype(np.uint16)
        smooth = np.clip(np.round(inpaint_biharmonic(gray / 255.0, m.astype(bool)) * 255), 0, 255).astype(np.uint16)
        return ((fsr + smooth + 1) // 2).astype(np.uint8)  # the mean, halves rounded up
    raise ValueError(f"unknown inpainting method {method!r}; one of telea, ns, fsr, fsr_biharmonic")


_POOLS: dict = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool of this process (keyed by pid too: a forked DataLoader worker must not reuse its parent's,
    whose threads did not survive the fork)."""
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="imgrestore-prefill")
    return _POOLS[key]


@torch.no_grad()
def classical_fill(gray: torch.Tensor, mask: torch.Tensor, method: str, radius: int = 5) -> torch.Tensor:
    """``inpaint_uint8`` over a (B,1,H,W) batch; known pixels keep their exact values. A uint8 batch (the
    training loader's, mask 0/1) gets a uint8 fill, a float one (in [0, 1]) a float fill."""
    as_uint8 = gray.dtype == torch.uint8
    if as_uint8:
        g, m = gray.cpu().numpy(), mask.cpu().numpy() > 0
    else:
        g = (gray.detach().float() * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        m = (mask.detach() > 0.5).cpu().numpy()

    def fill(i: int) -> np.ndarray:
        return inpaint_uint8(g[i, 0], m[i, 0], method, radius)

    threads = torch.get_num_threads()
    many = min(len(g), threads) > 1
    filled = list(_pool(threads).map(fill, range(len(g))) if many else map(fill, range(len(g))))
    filled = np.stack(filled)[:, None]
    if as_uint8:
        return torch.from_numpy(np.where(m, filled, g)).to(gray.device)
    filled = torch.from_numpy(filled).to(device=gray.device, dtype=gray.dtype) / 255
    return gray * (1 - mask) + filled * mask


def prefill(gray: torch.Tensor, mask: torch.Tensor, method: str, radius: int = 5) -> torch.Tensor:
    """(B,1,H,W) gray with the hole filled by `method`; known pixels unchanged."""
    if method == "none":
        return gray
    if method == "pushpull":
        return push_pull(gray, mask)
    if method in CPU_PREFILLS:
        return classical_fill(gray, mask, method, radius)
    raise ValueError(f"prefill must be one of {PREFILLS}, got {method!r}")


class PrefillCollate:
    """A DataLoader ``collate_fn``: the default collation of (gray, mask, rgb) items, plus the batch's classical
    fill as a fourth tensor (uint8 for uint8 items), computed where the loader runs (its worker processes when
    ``num_workers`` > 0)."""

    def __init__(self, method: str, radius: int = 5):
        if method not in CPU_PREFILLS:
            raise ValueError(f"PrefillCollate is for the classical fills {CPU_PREFILLS}, got {method!r}")
        self.method, self.radius = method, int(radius)

    def __call__(self, items):
        gray, mask, rgb = default_collate(items)
        return gray, mask, rgb, classical_fill(gray, mask, self.method, self.radius)
