"""Models by name: ``@register_model`` adds a builder, ``create_model(name, **kwargs)`` builds one.

Kwargs that are ``None`` are dropped, so an unset config or CLI value never overrides a model's own default (the
timm convention). Every model takes ``(B, 1, D, H, W)`` patches and returns a dict with ``"logits"`` ``(B, 14)``
and, for models with a segmentation head, ``"heatmap"`` ``(B, 1, D, H, W)`` voxel logits.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
# Modules whose import registers the built-in models; imported on first use so ``import registry`` stays light.
_BUILTIN_MODULES = ("rsna_aneurysm.models.cnn3d", "rsna_aneurysm.models.unet3d", "rsna_aneurysm.models.timm25d")


class UnknownModelError(KeyError):
    """``create_model`` was given a name no module registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model class or builder function under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model name {name!r} is already registered by {_REGISTRY[name]!r}")
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def model_builder(name: str) -> Callable[..., nn.Module]:
    """The registered builder for ``name``; raises :class:`UnknownModelError` naming the known models."""
    _load_builtins()
    if name not in _REGISTRY:
        raise UnknownModelError(f"unknown model name {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def model_kwarg_names(name: str) -> set[str] | None:
    """Keyword arguments the builder of ``name`` accepts (None when it takes ``**kwargs``)."""
    sig = inspect.signature(model_builder(name))
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name``; ``None`` kwargs are dropped, unknown kwargs raise TypeError."""
    builder = model_builder(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    accepted = model_kwarg_names(name)
    if accepted is not None:
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise TypeError(f"model {name!r} got unknown argument(s) {', '.join(unknown)}; "
                            f"accepted: {', '.join(sorted(accepted))}")
    return builder(**kwargs)
