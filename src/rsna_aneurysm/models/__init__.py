"""models stage: patch models by name (``create_model``), each returning ``{"logits": (B, 14), ...}``."""

from __future__ import annotations

from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
