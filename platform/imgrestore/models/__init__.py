"""Restoration models: damaged gray image + mask of the lost region -> RGB.

timm-style registry: ``create_model(name, **kwargs)``, ``list_models()``,
``register_model``. One file per family; importing this package registers all
of them.

Common interface of every model (``models.base.Restorer``)::

    rgb = model(gray, mask)   # gray, mask: (B,1,H,W) float, gray in [0,1], mask in {0,1}
                              # rgb: (B,3,H,W) in [0,1]; any H, W (padded inside, cropped back);
                              # its luma equals `gray` outside the mask (exactly at uint8 with color.lock_luma)
    model.config              # plain-data kwargs: create_model(model.name, **model.config) rebuilds it
    model.name                # registered name (set by create_model)

Learned families: ``unet``, ``two_stage_unet``, ``effnet_unet`` (pretrained
EfficientNet-Lite0 encoder); each fills the hole classically first (``prefill``)
and predicts chroma by regression or by classification over colour bins
(``chroma``). Classical restorers, no parameters: ``input_copy``, ``telea``,
``navier_stokes``, ``fsr``, ``fsr_biharmonic``.
"""

from .registry import create_model, is_model, list_models, register_model
from . import classical, effnet_unet, two_stage_unet, unet  # noqa: F401  (registers the families)
from .color import rgb_to_luma, rgb_to_ycbcr, ycbcr_to_rgb


def is_trainable(model) -> bool:
    """False for the classical restorers (nothing to train)."""
    return any(p.requires_grad for p in model.parameters())


__all__ = ["create_model", "is_model", "is_trainable", "list_models", "register_model", "rgb_to_luma",
           "rgb_to_ycbcr", "ycbcr_to_rgb"]
