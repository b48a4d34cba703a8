"""Two-stage scan inference: find the arterial region, crop it at the fine spacing, run the fine model there.

Per series: the region finder (or its fallback) gives a box; the box is cut from the preprocessed volume onto an
axis-aligned grid (an exact copy when the grid falls on the volume's voxels); the fine model's sliding windows run
over the crop only, with flip TTA and fold ensembles as in the whole-scan pipeline. Scan probabilities:

- **locations**: the windows' 13-way head, the location **atlas** (which artery each heatmap peak sits on, from
  its offset to the region centre, learned from the training series' arteries), or their mean (the default);
- **Aneurysm Present**: the windows' head, the heatmap's highest peak, or the larger of the two (the default).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from ..config import from_dict
from ..constants import ANEURYSM_PRESENT, LABEL_COLS, LOCATION_COLS
from ..infer.aggregate import AggregateConfig
from ..infer.scan import ScanPrediction, predict_volume
from ..infer.sliding_window import SlidingWindowInferer
from ..volume import Volume
from .finder import RegionBox, RegionConfig, RegionFinder, RegionLocator
from .geometry import Grid, head_box, sample
from .train_finder import FINDER_FILE, REGION_ATLAS, REGION_DIR, REGION_FILE

log = logging.getLogger(__name__)

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


class LocationAtlas:
    """Which location an offset from the region centre belongs to: a kernel density per location, times its
    frequency. Built from ``region/atlas.parquet`` (``location, dx, dy, dz`` per artery point)."""

    def __init__(self, table: pl.DataFrame, sigma_mm: float = 8.0, prior: np.ndarray | None = None) -> None:
        self.sigma = float(sigma_mm)
        self.points = {loc: table.filter(pl.col("location") == loc).select("dx", "dy", "dz").to_numpy()
                       for loc in LOCATION_COLS}
        self.prior = np.ones(len(LOCATION_COLS)) if prior is None else np.asarray(prior, dtype=np.float64)

    @classmethod
    def read(cls, path: str | Path, sigma_mm: float = 8.0, prior: np.ndarray | None = None) -> LocationAtlas:
        return cls(pl.read_parquet(path), sigma_mm, prior)

    def posterior(self, offsets: np.ndarray) -> np.ndarray:
        """``(P, 3)`` offsets (mm) -> ``(P, 13)`` probability of each location (rows sum to 1; uniform when no
        location has atlas points near)."""
        off = np.asarray(offsets, dtype=np.float64).reshape(-1, 3)
        dens = np.zeros((len(off), len(LOCATION_COLS)))
        for c, loc in enumerate(LOCATION_COLS):
            pts = self.points[loc]
            if len(pts) == 0:
                continue
            d2 = ((off[:, None, :] - pts[None, :, :]) ** 2).sum(axis=2)
            dens[:, c] = np.exp(-0.5 * d2 / self.sigma**2).mean(axis=1) * self.prior[c]
        total = dens.sum(axis=1, keepdims=True)
        uniform = np.full_like(dens, 1.0 / len(LOCATION_COLS))
        return np.where(total > 1e-300, dens / np.maximum(total, 1e-300), uniform)


def find_peaks(heat: np.ndarray, n: int, min_distance_vox: float) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` local maxima of ``heat`` at least ``min_distance_vox`` apart: indices (P, 3), values (P,)."""
    from scipy.ndimage import maximum_filter

    size = max(int(2 * round(min_distance_vox) + 1), 3)
    is_max = (heat == maximum_filter(heat, size=size, mode="constant", cval=-np.inf)) & (heat > 0)
    idx = np.argwhere(is_max)
    if len(idx) == 0:
        flat = int(np.argmax(heat))
        return np.array([np.unravel_index(flat, heat.shape)]), np.array([float(heat.flat[flat])])
    vals = heat[tuple(idx.T)]
    order = np.argsort(-vals)
    keep: list[int] = []
    for o in order:  # greedy suppression: plateaus give several equal maxima
        if all(np.linalg.norm(idx[o] - idx[k]) >= min_distance_vox for k in keep):
            keep.append(int(o))
        if len(keep) == n:
            break
    return idx[keep], vals[keep]


@dataclass
class RegionBundle:
    """Stage one of a weights folder: the locator (finder + fallback), the location atlas, the region settings."""

    locator: RegionLocator
    atlas: LocationAtlas | None
    cfg: RegionConfig


# Flat names of the region files in a packaged weights dataset (Kaggle datasets hold no sub-folders).
FLAT_NAMES = {"config": REGION_FILE, "finder": "region_finder.pt", "atlas": "region_atlas.parquet"}


def region_files(run_dir: str | Path) -> dict[str, Path] | None:
    """Stage one's files of a weights folder: ``region/{region.json, finder.pt, atlas.parquet}`` of a training run,
    or the flat ``region.json, region_finder.pt, region_atlas.parquet`` of a packaged one; None when absent."""
    run_dir = Path(run_dir)
    folder = run_dir / REGION_DIR
    if (folder / REGION_FILE).is_file():
        return {"config": folder / REGION_FILE, "finder": folder / FINDER_FILE, "atlas": folder / REGION_ATLAS}
    if (run_dir / FLAT_NAMES["config"]).is_file():
        return {k: run_dir / v for k, v in FLAT_NAMES.items()}
    return None


def has_region(run_dir: str | Path) -> bool:
    return region_files(run_dir) is not None


def load_region(run_dir: str | Path, sigma_mm: float = 8.0, prior: np.ndarray | None = None,
                device: str = "cpu") -> RegionBundle:
    """Stage one of a weights folder (:func:`region_files`): settings, finder (optional: without it every series
    uses the fallback) and atlas (optional: without it locations come from the fine model's head)."""
    import torch

    files = region_files(run_dir)
    if files is None:
        raise FileNotFoundError(f"{run_dir}: no region/{REGION_FILE} nor {FLAT_NAMES['config']} (rsna-aneurysm "
                                "region train)")
    cfg = from_dict(RegionConfig, json.loads(files["config"].read_text()))
    model = None
    if files["finder"].is_file():
        state = torch.load(files["finder"], map_location="cpu", weights_only=True)
        model = RegionFinder(tuple(state["finder"]["channels"]))
        model.load_state_dict(state["state_dict"])
    else:
        log.warning("%s: no region finder; every series gets the head-geometry fallback region", files["finder"])
    atlas = LocationAtlas.read(files["atlas"], sigma_mm, prior) if files["atlas"].is_file() else None
    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    return RegionBundle(RegionLocator(cfg, model, dev), atlas, cfg)


@dataclass
class TwoStagePrediction:
    """The scan prediction plus stage one's box, the crop grid and the peaks found (world mm, probability)."""

    scan: ScanPrediction
    box: RegionBox
    grid: Grid
    peaks_world: np.ndarray
    peaks_prob: np.ndarray
    region_s: float


def crop_region(vol: Volume, box: RegionBox, fill: float = 0.0) -> tuple[np.ndarray, Grid]:
    """The box cut from ``vol`` at the volume's (isotropic) spacing, snapped onto its voxels when it can be."""
    spacing = float(np.min(vol.spacing))
    grid = box.grid(spacing).snapped(vol)
    return sample(vol, grid, prefilter=False, fill=fill), grid


def predict_two_stage(models: list, vol: Volume, mask: np.ndarray | None, bundle: RegionBundle,
                      inferer: SlidingWindowInferer, agg: AggregateConfig, cfg: TwoStageConfig | None = None,
                      tta: bool = False) -> TwoStagePrediction:
    """Stage one, crop, stage two and the scan-level rules on one preprocessed volume (see the module docstring)."""
    cfg = cfg or TwoStageConfig()
    t0 = time.perf_counter()
    try:
        box = bundle.locator.locate(vol, mask)
    except Exception as e:  # noqa: BLE001 - stage one must not cost the series: the classical box answers instead
        log.warning("%s: region finder failed (%s: %s); head-geometry fallback region",
                    vol.meta.get("series_uid") or "series", type(e).__name__, e)
        box = bundle.locator.decide(None, float("nan"), None, head_box(vol, mask))
        box.reason = f"finder failed: {type(e).__name__}"
    crop, grid = crop_region(vol, box, cfg.fill_value)
    region_s = time.perf_counter() - t0
    scan = predict_volume(models, crop, None, inferer, agg, tta=tta, want_heatmap=True)
    t1 = time.perf_counter()
    probs = np.asarray(scan.probs, dtype=np.float64).copy()
    peaks_w, peaks_p = np.zeros((0, 3)), np.zeros(0)
    if scan.heatmap is not None:
        heat = scan.heatmap[0] if scan.heatmap.ndim == 4 else scan.heatmap
        idx, vals = find_peaks(heat, cfg.n_peaks, cfg.peak_distance_mm / grid.spacing[0])
        peaks_w, peaks_p = grid.index_to_world(idx.astype(np.float64)), np.clip(vals, 0.0, 1.0)
        heat_ap = float(peaks_p.max()) if len(peaks_p) else 0.0
        if cfg.present_rule == "heatmap":
            probs[AP] = heat_ap
        elif cfg.present_rule == "max":
            probs[AP] = max(probs[AP], heat_ap)
        elif cfg.present_rule == "mean":
            probs[AP] = 0.5 * (probs[AP] + heat_ap)
        if bundle.atlas is not None and cfg.location_rule != "head" and len(peaks_p):
            post = bundle.atlas.posterior(peaks_w - box.center[None, :])  # (P, 13)
            atlas_loc = 1.0 - np.prod(1.0 - peaks_p[:, None] * post, axis=0)  # noisy-or over the peaks
            head_loc = probs[LOC_IDX]
            probs[LOC_IDX] = atlas_loc if cfg.location_rule == "atlas" else 0.5 * (head_loc + atlas_loc)
    elif cfg.present_rule == "heatmap" or cfg.location_rule == "atlas":
        raise ValueError("the fine model has no heatmap head; use present_rule/location_rule 'head'")
    scan.probs = np.clip(probs, 0.0, 1.0)
    scan.aggregate_s += time.perf_counter() - t1
    return TwoStagePrediction(scan, box, grid, peaks_w, peaks_p, region_s)
