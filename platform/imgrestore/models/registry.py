"""Model registry (timm style): one name -> one factory function.

A factory is registered with ``@register_model`` and must accept only plain
keyword arguments (ints, floats, strings, bools), so that a model can be
rebuilt from its ``config`` dict::

    model = create_model("unet", base_channels=16)
    clone = create_model(model.name, **model.config)
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None,
                   aliases: tuple[str, ...] = ()):
    """Register a model factory under ``name`` (default: the function's name).

    Usable as ``@register_model`` or ``@register_model(name="x", aliases=("y",))``.
    """

    def _register(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        for key in (name or f.__name__, *aliases):
            if key in _MODELS and _MODELS[key] is not f:
                raise ValueError(f"model {key!r} is already registered")
            _MODELS[key] = f
        return f

    return _register(fn) if fn is not None else _register


def list_models() -> list[str]:
    """Sorted names of every registered model (aliases included)."""
    return sorted(_MODELS)


def is_model(name: str) -> bool:
    return name in _MODELS


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model. ``kwargs`` go to the model's constructor.

    The returned module has ``model.name`` (the registered name used) and
    ``model.config`` (a dict of plain values: ``create_model(model.name, **model.config)``
    rebuilds the same architecture).
    """
    try:
        factory = _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None
    model = factory(**kwargs)
    model.name = name
    return model
