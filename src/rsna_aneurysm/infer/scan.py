"""Scan-level inference on one preprocessed volume: crop to the head, sliding windows per model and TTA pass,
aggregation to the 14 probabilities, optional blended heatmap.

The building blocks of :class:`~.pipeline.ScanPipeline`, which every caller goes through.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch.nn as nn

from ..models.sliding_window import SlidingWindowInferer
from ..volume import Volume
from .aggregate import AggregateConfig, combine, finalize, flip_lr, scan_probabilities


@dataclass
class ScanPrediction:
    """14 probabilities (label order), the mean heatmap over passes (or None), the windows run per pass, and the
    seconds spent outside the sliding windows (flips, aggregation, heatmap averaging)."""

    probs: np.ndarray
    heatmap: np.ndarray | None
    n_windows: int
    n_passes: int
    aggregate_s: float = 0.0


def crop_to_mask(vol: Volume, mask: Volume | None, margin_mm: float) -> tuple[Volume, Volume | None]:
    """Both volumes cropped to the mask's bounding box plus ``margin_mm`` (the origin moves with the crop).

    No mask, an empty mask or a negative margin return the inputs unchanged.
    """
    if mask is None or margin_mm < 0:
        return vol, mask
    m = np.asarray(mask.array) > 0
    if not m.any():
        return vol, mask
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(m.any(axis=other))
        # Array axes are (k, j, i); spacing is given in (i, j, k) order.
        pad = int(np.ceil(margin_mm / vol.spacing[2 - axis]))
        lo.append(max(int(idx[0]) - pad, 0))
        hi.append(min(int(idx[-1]) + pad + 1, m.shape[axis]))
    if lo == [0, 0, 0] and hi == list(m.shape):
        return vol, mask
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    origin = vol.index_to_world([lo[2], lo[1], lo[0]])
    cropped = vol.with_array(np.ascontiguousarray(vol.array[sl]), origin=tuple(origin))
    cropped_mask = mask.with_array(np.ascontiguousarray(mask.array[sl]), origin=tuple(origin))
    return cropped, cropped_mask


def predict_volume(models: list[nn.Module], array: np.ndarray, mask: np.ndarray | None,
                   inferer: SlidingWindowInferer, agg: AggregateConfig, tta: bool = False,
                   want_heatmap: bool = False, on_batch: Callable[[int], None] | None = None) -> ScanPrediction:
    """Run every model (and its left-right mirrored pass when ``tta``) over the volume; combine to 14 probabilities.

    ``array`` is a canonical preprocessed volume ``(k, j, i)``; the mirror flips axis -1 (the patient's left-right).
    ``on_batch`` is called with the window count of every forward pass (progress reporting).
    """
    if not models:
        raise ValueError("predict_volume needs at least one model")
    t_start = time.perf_counter()
    t_windows = 0.0
    passes: list[np.ndarray] = []
    heat_sum: np.ndarray | None = None
    n_heat = 0
    n_windows = 0
    for model in models:
        for flipped in ((False, True) if tta else (False,)):
            x = np.ascontiguousarray(flip_lr(array)) if flipped else array
            m = None if mask is None else (np.ascontiguousarray(flip_lr(mask)) if flipped else mask)
            t0 = time.perf_counter()
            res = inferer(model, x, mask=m, on_batch=on_batch)
            t_windows += time.perf_counter() - t0
            n_windows = max(n_windows, len(res.window_starts))
            if res.window_logits.shape[1] == 0:
                raise ValueError("the model returned no label logits ('logits') for its windows")
            passes.append(scan_probabilities(res.window_logits, agg, flipped=flipped))
            if want_heatmap and res.heatmap is not None and res.heatmap.ndim == 3:
                h = flip_lr(res.heatmap) if flipped else res.heatmap
                heat_sum = h.astype(np.float32) if heat_sum is None else heat_sum + h
                n_heat += 1
    probs = finalize(combine(passes, agg.ensemble), agg)
    heatmap = None if heat_sum is None else np.ascontiguousarray(heat_sum / n_heat)
    return ScanPrediction(probs=probs, heatmap=heatmap, n_windows=n_windows, n_passes=len(passes),
                          aggregate_s=time.perf_counter() - t_start - t_windows)
