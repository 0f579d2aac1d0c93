"""Restoration models: damaged gray image + mask of the lost region -> RGB.

timm-style registry: ``create_model(name, **kwargs)``, ``list_models()``,
``register_model``. One file per family; importing this package registers all
of them.

Common interface of every model::

    rgb = model(gray, mask)   # gray, mask: (B,1,H,W) float, gray in [0,1], mask in {0,1}
                              # rgb: (B,3,H,W) in [0,1]; any H, W (padded inside, cropped back)
    model.config              # plain-data kwargs: create_model(model.name, **model.config) rebuilds it
    model.name                # registered name (set by create_model)

Families: ``unet``, ``two_stage_unet`` (``forward(..., return_aux=True)`` ->
``(rgb, gray_inpainted)``), ``ycbcr_unet`` / alias ``lab_unet`` (keeps known
luma exactly), ``effnet_unet`` (pretrained EfficientNet-Lite0 encoder).
"""

from .registry import create_model, is_model, list_models, register_model
from . import effnet_unet, two_stage_unet, unet, ycbcr_unet  # noqa: F401  (registers the families)
from .ycbcr_unet import rgb_to_luma, rgb_to_ycbcr, ycbcr_to_rgb

__all__ = ["create_model", "is_model", "list_models", "register_model", "rgb_to_luma", "rgb_to_ycbcr", "ycbcr_to_rgb"]
