"""The two-stage pipeline's scan-level rules: from the fine model's windows and heatmap on the region crop to the
14 probabilities.

- **locations**: the windows' 13-way head, the location **atlas** (which artery each heatmap peak sits on, from
  its offset to the region centre, learned from the training series' arteries), or their mean (the default);
- **Aneurysm Present**: the windows' head, the heatmap's highest peak, or the larger of the two (the default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..constants import ANEURYSM_PRESENT, LABEL_COLS, LOCATION_COLS
from ..region.geometry import Grid
from ..region.stage_one import LocationAtlas, find_peaks

AP = LABEL_COLS.index(ANEURYSM_PRESENT)
LOC_IDX = [LABEL_COLS.index(c) for c in LOCATION_COLS]


@dataclass
class TwoStageConfig:
    """Scan-level rules of the two-stage pipeline (part of the predictor's settings)."""

    location_rule: Literal["head", "atlas", "mean"] = "mean"
    present_rule: Literal["head", "heatmap", "max", "mean"] = "max"
    atlas_sigma_mm: float = 8.0  # kernel width of the atlas density
    n_peaks: int = 3  # heatmap peaks asked about their location
    peak_distance_mm: float = 12.0  # peaks closer than this are one finding
    fill_value: float = 0.0  # crop voxels outside the scanned volume


def apply_rules(probs: np.ndarray, heatmap: np.ndarray | None, grid: Grid, center: np.ndarray,
                atlas: LocationAtlas | None, cfg: TwoStageConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The window head's 14 probabilities combined with the heatmap's peaks: (probabilities, peaks in world mm,
    peak values)."""
    probs = np.asarray(probs, dtype=np.float64).copy()
    if heatmap is None:
        if cfg.present_rule == "heatmap" or cfg.location_rule == "atlas":
            raise ValueError("the fine model has no heatmap head; use present_rule/location_rule 'head'")
        return probs, np.zeros((0, 3)), np.zeros(0)
    heat = heatmap[0] if heatmap.ndim == 4 else heatmap
    idx, vals = find_peaks(heat, cfg.n_peaks, cfg.peak_distance_mm / grid.spacing[0])
    peaks_w, peaks_p = grid.index_to_world(idx.astype(np.float64)), np.clip(vals, 0.0, 1.0)
    heat_ap = float(peaks_p.max()) if len(peaks_p) else 0.0
    if cfg.present_rule == "heatmap":
        probs[AP] = heat_ap
    elif cfg.present_rule == "max":
        probs[AP] = max(probs[AP], heat_ap)
    elif cfg.present_rule == "mean":
        probs[AP] = 0.5 * (probs[AP] + heat_ap)
    if atlas is not None and cfg.location_rule != "head" and len(peaks_p):
        post = atlas.posterior(peaks_w - np.asarray(center)[None, :])  # (P, 13)
        atlas_loc = 1.0 - np.prod(1.0 - peaks_p[:, None] * post, axis=0)  # noisy-or over the peaks
        head_loc = probs[LOC_IDX]
        probs[LOC_IDX] = atlas_loc if cfg.location_rule == "atlas" else 0.5 * (head_loc + atlas_loc)
    return np.clip(probs, 0.0, 1.0), peaks_w, peaks_p
