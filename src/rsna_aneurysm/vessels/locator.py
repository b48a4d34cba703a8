"""The region from predicted vessels: stage one of the vessel-guided pipeline.

The box centre is the mean of the centroids of the vessel classes the segmenter found (each class counts once,
whatever its volume, so the long carotids do not drag the box down the neck); its size is ``box_mm`` grown to hold
the found vessels' extent plus a margin, up to ``max_box_mm``. When the segmentation is missing, failed, or found
too little vessel (``min_vessel_ml``) or too few classes, the box comes from the fallback locator (the region
finder when the weights have one, else the head-geometry box), and the reason is logged and kept in
``RegionBox.reason``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import require
from ..region.finder import RegionBox, RegionConfig, RegionLocator
from ..volume import Volume
from .types import N_VESSEL_CLASSES, Segmenter, VesselProbs

log = logging.getLogger(__name__)


@dataclass
class VesselRegionConfig:
    """Settings of :class:`VesselLocator`."""

    box_mm: tuple[float, float, float] = (128.0, 112.0, 112.0)  # region size along x, y, z
    max_box_mm: tuple[float, float, float] = (160.0, 150.0, 140.0)
    extent_margin_mm: float = 10.0  # grow the box to the found vessels' 2nd..98th percentile extent plus this
    threshold: float = 0.5  # vessel probability counted as vessel
    min_vessel_ml: float = 0.3  # less vessel than this: fallback
    min_classes: int = 3  # fewer vessel classes found than this: fallback

    def __post_init__(self) -> None:
        self.box_mm = tuple(float(v) for v in self.box_mm)
        self.max_box_mm = tuple(float(v) for v in self.max_box_mm)
        require(len(self.box_mm) == 3 and min(self.box_mm) > 0, "box_mm", f"three positive sizes, got {self.box_mm}")
        require(0.0 < self.threshold < 1.0, "threshold", f"must lie in (0, 1), got {self.threshold}")


def vessel_box(probs: VesselProbs, cfg: VesselRegionConfig) -> tuple[np.ndarray, np.ndarray] | str:
    """(centre, size) of the region the vessels give, or why there is none."""
    labels = probs.labels()
    labels[probs.foreground() < cfg.threshold] = 0
    voxel_ml = float(np.prod(probs.grid.spacing)) / 1000.0
    n = int((labels > 0).sum())
    if n * voxel_ml < cfg.min_vessel_ml:
        return f"too little vessel found ({n * voxel_ml:.2f} ml < {cfg.min_vessel_ml:g})"
    centroids, points = [], []
    for v in range(1, N_VESSEL_CLASSES):
        idx = np.argwhere(labels == v)
        if len(idx) >= 3:
            world = probs.grid.index_to_world(idx.astype(np.float64))
            centroids.append(np.median(world, axis=0))
            points.append(world)
    if len(centroids) < cfg.min_classes:
        return f"too few vessel classes found ({len(centroids)} < {cfg.min_classes})"
    center = np.mean(centroids, axis=0)
    allp = np.concatenate(points)
    lo, hi = np.percentile(allp, 2, axis=0), np.percentile(allp, 98, axis=0)
    half = np.maximum(np.abs(hi - center), np.abs(center - lo)) + cfg.extent_margin_mm
    size = np.minimum(np.maximum(np.asarray(cfg.box_mm), 2.0 * half), np.asarray(cfg.max_box_mm))
    return center, size


class VesselLocator:
    """Stage one from predicted vessels (see the module docstring). ``segmenter`` None: fallback boxes only."""

    def __init__(self, cfg: VesselRegionConfig, segmenter: Segmenter | None, fallback: Any = None) -> None:
        """``fallback``: anything with ``locate(vol, mask) -> RegionBox`` that never raises (the region finder's
        stage); default the head-geometry box."""
        self.cfg = cfg
        self.segmenter = segmenter
        self.fallback = fallback or RegionLocator(RegionConfig(box_mm=cfg.box_mm), None)
        self.atlas = None
        self.last_probs: VesselProbs | None = None
        self.train_series: frozenset[str] | None = None  # the segmenter's labelled series, when known

    def locate_from(self, vol: Volume, mask: np.ndarray | None, probs: VesselProbs | None) -> RegionBox:
        uid = vol.meta.get("series_uid") or "series"
        found = vessel_box(probs, self.cfg) if probs is not None else "no vessel segmentation"
        if isinstance(found, tuple):
            return RegionBox(center=found[0], size_mm=found[1], source="vessels")
        box = self.fallback.locate(vol, mask)
        reason = f"{found}; {box.source}" + (f" ({box.reason})" if box.reason else "")
        log.info("%s: region from the fallback: %s", uid, reason)
        return RegionBox(center=box.center, size_mm=box.size_mm, source=f"fallback-{box.source}",
                         spread_mm=box.spread_mm, reason=reason)

    def locate(self, vol: Volume, mask: np.ndarray | None) -> RegionBox:
        probs = None
        if self.segmenter is not None:
            try:
                probs = self.segmenter.segment(vol)
            except Exception as e:  # noqa: BLE001 - locate never raises
                log.error("%s: vessel segmentation failed (%s: %s)", vol.meta.get("series_uid") or "series",
                          type(e).__name__, e)
        self.last_probs = probs
        return self.locate_from(vol, mask, probs)
