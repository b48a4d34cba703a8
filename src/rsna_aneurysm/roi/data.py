"""ROI inputs of the vessel-guided classifier, one path for training and inference.

:func:`build_roi` takes a preprocessed (canonical) volume and its head mask, runs the vessel segmenter, asks the
vessel locator for the region, and cuts the region at the ROI spacing: the image (trilinear), three position
channels (where in the head each voxel is, as the segmenter saw it) and the 13 vessel probabilities. The same
function feeds the ROI cache (training) and the scan pipeline (inference), so the classifier sees at training
exactly what it sees in the kernel.

The ROI cache (``rsna-aneurysm roi cache``) holds one ``.npz`` per series: the ROI grown by ``jitter_vox`` on every
side (training crops a random window from it; validation and inference take the centre), the vessel probabilities
quantised to 8 bits, the aneurysm positions in ROI voxels and the 14 labels; ``index.parquet`` lists the entries.
A rerun keeps every intact entry (resumable), and series run in parallel processes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import require
from ..constants import LR_PERMUTATION
from ..region.finder import RegionBox
from ..region.geometry import Grid, sample
from ..vessels.locator import VesselLocator
from ..vessels.model import POSITION_SCALE_MM
from ..vessels.types import N_VESSEL_CLASSES, Segmenter, VesselProbs
from ..volume import Volume
from .model import flip_array

log = logging.getLogger(__name__)

N_VESSELS = N_VESSEL_CLASSES - 1
# ROI input channels: image, x / y / z position, 13 vessel probabilities (class v in channel 3 + v).
ROI_CHANNELS = 4 + N_VESSELS


@dataclass
class RoiConfig:
    """Where and how finely the classifier looks. The ROI is ``shape`` voxels (k, j, i) at ``spacing_mm``, centred
    on the vessel locator's region; the defaults (2 mm, 112 x 112 x 128 mm) fit this CPU and the synthetic heads;
    for real data use 0.5-0.8 mm (``configs/roi_gpu.json``)."""

    spacing_mm: float = 2.0
    shape: tuple[int, int, int] = (56, 56, 64)
    jitter_vox: int = 4  # the cache holds this many extra voxels per side for random training crops
    fill: float = 0.0  # image value outside the volume

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        require(len(self.shape) == 3 and min(self.shape) >= 8, "shape", f"three sizes >= 8, got {list(self.shape)}")
        require(0.1 <= self.spacing_mm <= 8.0, "spacing_mm", f"must lie in 0.1..8 mm, got {self.spacing_mm}")
        require(self.jitter_vox >= 0, "jitter_vox", f"must be >= 0, got {self.jitter_vox}")

    @property
    def size_mm(self) -> np.ndarray:
        """Extent along (x, y, z) in mm."""
        return np.asarray(self.shape[::-1], dtype=np.float64) * self.spacing_mm


@dataclass
class RoiInput:
    """One series' ROI: ``x`` (ROI_CHANNELS, k, j, i) float32 on ``grid``, the region box and the vessel
    probabilities it came from."""

    x: np.ndarray
    grid: Grid
    box: RegionBox
    probs: VesselProbs | None
    timings: dict[str, float]


def sample_channels(arrays: np.ndarray, src: Grid, dst: Grid, fill: float = 0.0) -> np.ndarray:
    """``arrays`` (C, k, j, i) on axis-aligned grid ``src`` resampled (trilinear) onto axis-aligned ``dst``."""
    coords = []
    for a in range(3):  # a over x, y, z
        n = dst.shape[2 - a]
        world = dst.origin[a] + dst.spacing[a] * np.arange(n)
        idx = (world - src.origin[a]) / src.spacing[a]
        size = src.shape[2 - a]
        coords.append(torch.from_numpy(2.0 * idx / max(size - 1, 1) - 1.0).float())
    gx, gy, gz = coords
    grid = torch.stack(torch.meshgrid(gz, gy, gx, indexing="ij")[::-1], dim=-1)[None]  # (1, k, j, i, 3) x,y,z
    t = torch.from_numpy(np.ascontiguousarray(arrays, dtype=np.float32))[None]
    out = F.grid_sample(t - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=True) + fill
    return out[0].numpy()


def position_grid(grid: Grid, ref_center: np.ndarray) -> np.ndarray:
    """(3, k, j, i) float32: x, y, z of every voxel of ``grid`` from ``ref_center``, in 100 mm (the segmenter's
    position channels)."""
    axes = [(grid.origin[a] + grid.spacing[a] * np.arange(grid.shape[2 - a]) - ref_center[a]) / POSITION_SCALE_MM
            for a in range(3)]
    shape = tuple(grid.shape)
    x = np.broadcast_to(axes[0][None, None, :], shape)
    y = np.broadcast_to(axes[1][None, :, None], shape)
    z = np.broadcast_to(axes[2][:, None, None], shape)
    return np.stack([x, y, z]).astype(np.float32)


def build_roi(vol: Volume, mask: np.ndarray | None, segmenter: Segmenter | None, locator: VesselLocator,
              cfg: RoiConfig, pad_vox: int = 0, clock: Any = None) -> RoiInput:
    """The ROI input of one canonical volume (see the module docstring); ``pad_vox`` extra voxels per side.
    Without a segmenter (or when it fails) the locator's fallback gives the box and the vessel channels are 0."""
    import time

    clock = clock or time.perf_counter
    t0 = clock()
    probs: VesselProbs | None = None
    if segmenter is not None:
        try:
            probs = segmenter.segment(vol)
        except Exception as e:  # noqa: BLE001 - the region falls back; the classifier still runs on the image
            log.error("%s: vessel segmentation failed (%s: %s); fallback region, no vessel channels",
                      vol.meta.get("series_uid") or "series", type(e).__name__, e)
    t1 = clock()
    box = locator.locate_from(vol, mask, probs)
    shape = tuple(int(s) + 2 * pad_vox for s in cfg.shape)
    grid = Grid.centred(box.center, shape, cfg.spacing_mm)
    image = sample(vol, grid, prefilter=True, fill=cfg.fill)
    if probs is not None:
        ref = probs.grid.center
        vessels = sample_channels(np.asarray(probs.probs[1:], dtype=np.float32), probs.grid, grid)
    else:
        lo, hi = _array_box(vol)
        ref = (lo + hi) / 2.0
        vessels = np.zeros((N_VESSELS, *shape), np.float32)
    x = np.concatenate([image[None], position_grid(grid, ref), vessels]).astype(np.float32)
    t2 = clock()
    return RoiInput(x=x, grid=grid, box=box, probs=probs,
                    timings={"segment_s": t1 - t0, "roi_s": t2 - t1})


def _array_box(vol: Volume) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(vol.array.shape[::-1], dtype=np.float64)
    a = vol.index_to_world(np.zeros((1, 3)))[0]
    b = vol.index_to_world((n - 1.0)[None, :])[0]
    return np.minimum(a, b), np.maximum(a, b)


def sphere_target(shape: tuple[int, int, int], centers_vox: np.ndarray, radius_vox: float) -> np.ndarray:
    """(k, j, i) float32 map: 1 inside a ball of ``radius_vox`` around each centre (k, j, i voxel coordinates)."""
    out = np.zeros(shape, np.float32)
    if len(centers_vox) == 0:
        return out
    kk, jj, ii = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for c in np.asarray(centers_vox, dtype=np.float64).reshape(-1, 3):
        d2 = (kk - c[0]) ** 2 + (jj - c[1]) ** 2 + (ii - c[2]) ** 2
        out[d2 <= radius_vox**2] = 1.0
    return out


@dataclass
class RoiSample:
    uid: str
    image: np.ndarray
    vessels: np.ndarray
    ref: np.ndarray
    grid_origin: np.ndarray
    spacing: float
    centers: np.ndarray
    labels: np.ndarray


def load_samples(cache_dir: str | Path, uids: list[str]) -> list[RoiSample]:
    out = []
    for uid in uids:
        with np.load(Path(cache_dir) / f"{uid}.npz") as z:
            out.append(RoiSample(uid, z["image"], z["vessels"], z["ref"], z["grid_origin"], float(z["spacing"]),
                                 z["centers"], z["labels"]))
    return out


def sample_input(s: RoiSample, cfg: Any, offset: np.ndarray, flip: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input (ROI_CHANNELS, k, j, i), labels (14,), sphere target (k, j, i)) of the window at ``offset`` voxels
    into the cached (padded) ROI; ``cfg`` a ``RoiTrainConfig`` (``roi.shape``, ``sphere_radius_vox``)."""
    shape = cfg.roi.shape
    sl = tuple(slice(int(o), int(o) + n) for o, n in zip(offset, shape))
    image = s.image[sl].astype(np.float32)
    vessels = s.vessels[(slice(None), *sl)].astype(np.float32) / 255.0
    origin = s.grid_origin + s.spacing * np.asarray(offset[::-1], dtype=np.float64)
    grid = Grid(tuple(origin), (s.spacing,) * 3, tuple(shape))
    ref = s.grid_origin - s.ref * 100.0  # position channels were (world - ref) / 100 at the padded origin
    pos = position_grid(grid, ref)
    x = np.concatenate([image[None], pos, vessels])
    centers = s.centers - np.asarray(offset, dtype=np.float32)[None, :]
    sphere = sphere_target(shape, centers, cfg.sphere_radius_vox)
    labels = s.labels.copy()
    if flip:
        x = flip_array(x)
        sphere = sphere[..., ::-1]
        labels = labels[list(LR_PERMUTATION)]
    return np.ascontiguousarray(x), labels, np.ascontiguousarray(sphere)
