"""From per-window outputs to the 14 scan-level probabilities: pooling, left-right flip TTA, fold ensembles.

Pooling over windows is selectable: ``max`` (one confident window decides), ``topk_mean`` (the mean of the k most
confident windows, less noisy than the max) or ``noisy_or`` (the scan is positive unless every window is negative,
``1 - prod(1 - p)``). Flip TTA mirrors the patient's left-right axis, which is array axis -1 (``i``) of a canonical
preprocessed volume, so the model's "Left ..." outputs on the mirrored scan are the "Right ..." findings of the
original: :func:`unflip_labels` swaps the pairs back (``constants.LR_PERMUTATION``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..constants import ANEURYSM_PRESENT, LABEL_COLS, LR_PERMUTATION, N_LABELS

PoolMethod = Literal["max", "topk_mean", "noisy_or"]


@dataclass
class AggregateConfig:
    """How window outputs become scan probabilities."""

    method: PoolMethod = "max"  # pooling over windows: max, topk_mean or noisy_or
    top_k: int = 3  # windows averaged by topk_mean
    ensemble: Literal["mean", "logit_mean"] = "mean"  # how folds and TTA passes are combined
    present_from_locations: bool = False  # Aneurysm Present = max(own output, every location output)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, float64 in, same shape out."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def logit(p: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def pool_windows(window_probs: np.ndarray, method: PoolMethod = "max", top_k: int = 3) -> np.ndarray:
    """``(N, L)`` window probabilities -> ``(L,)`` scan probabilities."""
    p = np.asarray(window_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"pool_windows needs (N >= 1, L) probabilities, got shape {p.shape}")
    if method == "max":
        return p.max(axis=0)
    if method == "topk_mean":
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        k = min(top_k, p.shape[0])
        return np.sort(p, axis=0)[-k:].mean(axis=0)
    if method == "noisy_or":
        # 1 - prod(1 - p) in log space so hundreds of windows neither underflow nor lose precision.
        return -np.expm1(np.log1p(-np.clip(p, 0.0, 1.0 - 1e-12)).sum(axis=0))
    raise ValueError(f"unknown pooling method {method!r}; use max, topk_mean or noisy_or")


def flip_lr(array: np.ndarray) -> np.ndarray:
    """Mirror the patient's left-right axis (array axis -1 of a canonical volume); a view, no copy."""
    return np.asarray(array)[..., ::-1]


def unflip_labels(probs: np.ndarray) -> np.ndarray:
    """Outputs of a model run on a mirrored scan, expressed for the original scan (Left/Right pairs swapped)."""
    p = np.asarray(probs)
    if p.shape[-1] != N_LABELS:
        raise ValueError(f"expected {N_LABELS} label outputs on the last axis, got shape {p.shape}")
    return p[..., list(LR_PERMUTATION)]


def combine(predictions: list[np.ndarray], how: Literal["mean", "logit_mean"] = "mean") -> np.ndarray:
    """Average several ``(L,)`` probability vectors (TTA passes, folds) into one."""
    if not predictions:
        raise ValueError("combine needs at least one prediction")
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in predictions])
    if how == "mean":
        return stack.mean(axis=0)
    if how == "logit_mean":
        return sigmoid(logit(stack).mean(axis=0))
    raise ValueError(f"unknown ensemble rule {how!r}; use mean or logit_mean")


def scan_probabilities(window_logits: np.ndarray, cfg: AggregateConfig | None = None,
                       flipped: bool = False) -> np.ndarray:
    """One pass's ``(N, 14)`` window logits -> ``(14,)`` probabilities in the original scan's label order."""
    cfg = cfg or AggregateConfig()
    p = pool_windows(sigmoid(window_logits), cfg.method, cfg.top_k)
    if p.shape[0] != N_LABELS:
        raise ValueError(f"model gave {p.shape[0]} labels per window, expected {N_LABELS}")
    return unflip_labels(p) if flipped else p


def finalize(probs: np.ndarray, cfg: AggregateConfig | None = None) -> np.ndarray:
    """Last scan-level rules (Aneurysm Present from the locations when asked), clipped to [0, 1]."""
    cfg = cfg or AggregateConfig()
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0).copy()
    if cfg.present_from_locations:
        ap = LABEL_COLS.index(ANEURYSM_PRESENT)
        p[ap] = max(p[ap], float(np.delete(p, ap).max()))
    return p


def apply_thresholds(probs: np.ndarray, thresholds: dict[str, float], default: float = 0.5) -> np.ndarray:
    """``(..., 14)`` probabilities -> 0/1 decisions (positive when >= threshold, the rule of ``thresholds.json``
    from ``rsna-aneurysm score``); labels without a threshold use ``default``."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.array([thresholds.get(name, default) for name in LABEL_COLS])
    return (p >= t).astype(np.int8)
