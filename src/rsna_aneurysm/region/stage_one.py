"""Stage one at inference: where the arteries are. A weights folder's region finder (with the classical head-geometry
fallback), its location atlas and the crop of the region box.

:class:`RegionStage` is the locator the scan pipeline (``infer.pipeline``) plugs in: ``locate(vol, mask)`` returns
the region box and never raises (a finder that fails answers with the head-geometry box and the reason). Anything
with that method (a vessel-segmentation locator, say) plugs in the same way.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from ..config import from_dict
from ..constants import LOCATION_COLS
from ..layout import REGION_DIR, REGION_FILES, region_files
from ..volume import Volume
from .finder import RegionBox, RegionConfig, RegionFinder, RegionLocator
from .geometry import Grid, head_box, sample

log = logging.getLogger(__name__)


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
class RegionStage:
    """Stage one of a weights folder: the locator (finder + fallback), the location atlas, the region settings and
    the series the finder trained on (None when its metrics do not say)."""

    locator: RegionLocator
    atlas: LocationAtlas | None
    cfg: RegionConfig
    source: Path
    train_series: frozenset[str] | None = None
    fallbacks: list[str] = field(default_factory=list)

    def locate(self, vol: Volume, mask: np.ndarray | None) -> RegionBox:
        """The region box of one preprocessed volume; a failing finder gives the head-geometry box instead."""
        try:
            return self.locator.locate(vol, mask)
        except Exception as e:  # noqa: BLE001 - stage one must not cost the series: the classical box answers
            uid = vol.meta.get("series_uid") or "series"
            log.warning("%s: region finder failed (%s: %s); head-geometry fallback region", uid, type(e).__name__, e)
            box = self.locator.decide(None, float("nan"), None, head_box(vol, mask))
            box.reason = f"finder failed: {type(e).__name__}"
            return box


def fold_region_dir(run_dir: str | Path, fold: int) -> Path:
    """``region/fold_<k>/``: a finder trained without fold k's series (``region train --per-fold``)."""
    return Path(run_dir) / REGION_DIR / f"fold_{fold}"


def _files(run_dir: str | Path, fold: int | None) -> dict[str, Path] | None:
    """Stage one's files for ``fold``: its own finder when the run has one, else the run's (every fold's)."""
    if fold is not None:
        folder = fold_region_dir(run_dir, fold)
        if (folder / REGION_FILES["config"]).is_file():
            return {k: folder / v for k, v in REGION_FILES.items() if k != "metrics"}
    return region_files(run_dir)


def has_region(run_dir: str | Path) -> bool:
    return region_files(run_dir) is not None


def load_region(run_dir: str | Path, sigma_mm: float = 8.0, prior: np.ndarray | None = None,
                device: str = "cpu", fold: int | None = None) -> RegionStage:
    """Stage one of a weights folder (``layout.region_files``): settings, finder (optional: without it every series
    uses the fallback) and atlas (optional: without it locations come from the fine model's head). ``fold``: the
    finder trained without that fold's series, when the run has one."""
    import torch

    from ..runtime import resolve_device

    files = _files(run_dir, fold)
    if files is None:
        raise FileNotFoundError(f"{run_dir}: no region/{REGION_FILES['config']} nor flat {REGION_FILES['config']} "
                                "(rsna-aneurysm region train)")
    cfg = from_dict(RegionConfig, json.loads(files["config"].read_text()))
    model = None
    if files["finder"].is_file():
        state = torch.load(files["finder"], map_location="cpu", weights_only=True)
        model = RegionFinder(tuple(state["finder"]["channels"]))
        model.load_state_dict(state["state_dict"])
    else:
        log.warning("%s: no region finder; every series gets the head-geometry fallback region", files["finder"])
    atlas = LocationAtlas.read(files["atlas"], sigma_mm, prior) if files["atlas"].is_file() else None
    metrics = files["config"].with_name(REGION_FILES["metrics"])
    seen = None
    if metrics.is_file():
        listed = json.loads(metrics.read_text()).get("train_series")
        seen = frozenset(str(u) for u in listed) if listed is not None else None
    dev = str(resolve_device(device))
    return RegionStage(RegionLocator(cfg, model, dev), atlas, cfg, files["config"].parent, seen)


def crop_region(vol: Volume, box: RegionBox, fill: float = 0.0) -> tuple[np.ndarray, Grid]:
    """The box cut from ``vol`` at the volume's (isotropic) spacing, snapped onto its voxels when it can be."""
    spacing = float(np.min(vol.spacing))
    grid = box.grid(spacing).snapped(vol)
    return sample(vol, grid, prefilter=False, fill=fill), grid
