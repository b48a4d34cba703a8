"""One series from loaded volume to model-ready volume: reorient, resample, N4, mask, normalise."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..config import require, to_dict
from ..volume import Volume
from .geometry import DEFAULT_MAX_VOXELS, reorient_canonical, resample
from .intensity import n4_correct, normalize
from .mask import compute_mask, head_bounds


@dataclass
class PreprocessConfig:
    """Settings of the preprocessing; written as ``config.json`` beside the outputs."""

    # Target voxel spacing (mm) along i, j, k; null keeps the source spacing (canonical orientation only).
    spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    # Resample only a box around the head (plus crop_margin_mm): less air through every later stage.
    crop_to_head: bool = True
    crop_margin_mm: float = 10.0
    # Interpolation of the resampling: linear | bspline | nearest.
    interpolator: Literal["linear", "bspline", "nearest"] = "linear"
    # Head mask ("head"), crude brain mask ("brain"), none, or a name registered with mask.register_mask_fn.
    mask: str = "head"
    # Zero everything outside the mask after normalisation.
    apply_mask: bool = False
    # N4 bias-field correction: off, on MR series only, or on all series.
    n4: Literal["off", "mr", "all"] = "off"
    # N4 is fitted on an image shrunk by this factor (speed), then applied at full resolution.
    n4_shrink: int = 4
    # Hounsfield window mapped to [0, 1] for CTA.
    ct_window: tuple[float, float] = (-100.0, 700.0)
    # Percentiles (inside the mask) mapped to [0, 1] for MR.
    mr_percentiles: tuple[float, float] = (0.5, 99.8)
    # Write volumes as NIfTI (.nii.gz); otherwise only the manifest and localizers are produced.
    write_nifti: bool = True
    # Data type of the written volumes: float32 or float16 (half the disk, about 1e-3 relative precision).
    volume_dtype: Literal["float32", "float16"] = "float32"
    # Most voxels of the resampled grid (after crop_to_head); more raises GridTooLargeError before allocating
    # (a fallback row in the kernel, not an OOM kill). 2e8 = 800 MB float32; a head CTA is ~15e6 at 1 mm, ~120e6
    # at 0.5 mm. Null: unbounded.
    max_voxels: int | None = DEFAULT_MAX_VOXELS

    def __post_init__(self) -> None:
        """Checks beyond types (convention of ``rsna_aneurysm.config``): wrong values fail before any series runs."""
        require(self.spacing is None or (len(self.spacing) == 3 and min(self.spacing) > 0), "spacing",
                f"three positive spacings (mm) or null, got {self.spacing}")
        require(self.max_voxels is None or (isinstance(self.max_voxels, int) and not isinstance(self.max_voxels, bool)
                                            and self.max_voxels >= 1), "max_voxels",
                f"a positive whole number of voxels or null, got {self.max_voxels!r}")
        require(self.n4_shrink >= 1, "n4_shrink", f"must be at least 1, got {self.n4_shrink}")
        require(self.ct_window[0] < self.ct_window[1], "ct_window", f"needs low < high, got {self.ct_window}")
        lo, hi = self.mr_percentiles
        require(0.0 <= lo < hi <= 100.0, "mr_percentiles", f"needs 0 <= low < high <= 100, got {self.mr_percentiles}")

    def digest(self) -> str:
        """Short hash of the settings: part of the cache key of everything derived from the outputs.

        ``max_voxels`` is left out: it only refuses series, it never changes an output (existing caches stay
        valid)."""
        settings = {k: v for k, v in to_dict(self).items() if k != "max_voxels"}
        return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _is_mr(vol: Volume) -> bool:
    return not (vol.modality == "CTA" or vol.meta.get("dicom_modality") == "CT")


def preprocess_volume(vol: Volume, cfg: PreprocessConfig | None = None) -> tuple[Volume, Volume | None]:
    """Loaded series -> (normalised float32 volume in canonical orientation at the target spacing, mask or None)."""
    cfg = cfg or PreprocessConfig()
    if cfg.spacing is not None:
        # Resampling samples straight onto the canonical (identity-direction) grid: no reorientation copy needed.
        bounds = head_bounds(vol, cfg.crop_margin_mm) if cfg.crop_to_head else None
        v = resample(vol, cfg.spacing, cfg.interpolator, bounds=bounds, max_voxels=cfg.max_voxels)
    else:
        v = reorient_canonical(vol)
        if not np.allclose(v.direction, np.eye(3), atol=1e-4):  # oblique: remove the rotation at native spacing
            # At native spacing the source (already in memory) sets the scale: the rotated box is at most a few
            # times its voxels, so allow that much even past max_voxels (a real 512x512x1000 series must pass).
            limit = None if cfg.max_voxels is None else max(cfg.max_voxels, 3 * int(v.array.size))
            v = resample(v, v.spacing, cfg.interpolator, max_voxels=limit)
        else:
            v = v.with_array(v.array.astype(np.float32, copy=False))
    mask = compute_mask(v, cfg.mask)
    if cfg.n4 == "all" or (cfg.n4 == "mr" and _is_mr(v)):
        v = n4_correct(v, mask=mask, shrink=cfg.n4_shrink)
    v = normalize(v, cfg.ct_window, cfg.mr_percentiles, mask=mask)
    if mask is not None and cfg.apply_mask:
        v.array[mask == 0] = 0.0
    mask_vol = None if mask is None else v.with_array(mask)
    v.meta["preprocess"] = to_dict(cfg)
    return v, mask_vol
