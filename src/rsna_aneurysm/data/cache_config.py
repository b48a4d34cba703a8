"""The patch cache's settings, checked on construction so every command that builds them (``train``, ``cache``,
the Python API) refuses the same mistakes with the same message.

Kept apart from ``data.cache`` (the builder) so a config tree can hold it without importing the builder.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import require
from ..constants import MODALITIES


@dataclass
class CacheConfig:
    """How patches are cut. Every field is part of each entry's key: change one and entries are rebuilt."""

    # Patch size in voxels along (k, j, i) = (D, H, W).
    patch_size: tuple[int, int, int] = (64, 64, 64)
    # Voxel spacing of the patches in mm (resampled from the volume's spacing when they differ).
    spacing_mm: float = 1.0
    # Positive patch centres are jittered uniformly by up to this many mm per axis (kept so the aneurysm stays
    # inside the patch); hard negatives get the same jitter so a centred vessel is no give-away.
    jitter_mm: float = 12.0
    # Positive patches per aneurysm.
    positives_per_aneurysm: int = 4
    # Negative patches per positive patch over the whole dataset (spread evenly over all series).
    negative_ratio: float = 2.0
    # Every usable series contributes at least this many negatives.
    min_negatives_per_series: int = 2
    # Share of the negatives centred next to bright vessels (hard negatives); the rest anywhere in the head.
    hard_negative_fraction: float = 0.5
    # "Bright" = intensity at or above this percentile of the voxels deeper than hard_negative_depth_mm in the
    # head; the depth keeps hard negatives on vessels rather than on the skull.
    hard_negative_percentile: float = 99.0
    hard_negative_depth_mm: float = 12.0
    # Modalities whose arteries are darker than the tissue around them (T2: flow voids in bright CSF): their hard
    # negatives sit on the darkest deep voxels instead (at or below the 100 - hard_negative_percentile percentile),
    # since the brightest ones there are CSF.
    hard_negative_dark_modalities: tuple[str, ...] = ("MRI T2",)
    # No aneurysm may lie inside a negative patch or within this distance (mm) of its border.
    safety_radius_mm: float = 4.0
    # Radius (mm) of the target sphere drawn around each aneurysm in the patch masks.
    sphere_radius_mm: float = 4.0
    # Seed of the sampling (combined with each series uid, so results do not depend on worker order).
    seed: int = 0
    # Two-stage pipeline: draw negatives only inside this box (mm along x, y, z) around each series' region centre
    # (``region_targets.parquet`` of the preprocessed folder, from `rsna-aneurysm region targets`), where the
    # fine model will look. Null: anywhere in the head.
    region_box_mm: tuple[float, float, float] | None = None
    # Hard-negative mining: a table of false-positive positions (``rsna-aneurysm mine``: SeriesInstanceUID,
    # world_x, world_y, world_z); each gives mined_per_point negatives (jittered as the positives), kept only
    # when they clear every aneurysm by safety_radius_mm.
    mined_negatives: str | None = None
    mined_per_point: int = 2

    def __post_init__(self) -> None:
        """Checks beyond types (``config`` module docstring); ConfigError naming the field."""
        require(len(self.patch_size) == 3 and min(self.patch_size) >= 4, "patch_size",
                f"three sizes of at least 4, got {self.patch_size}")
        require(self.spacing_mm > 0, "spacing_mm", f"must be positive, got {self.spacing_mm}")
        for key in ("jitter_mm", "negative_ratio", "hard_negative_depth_mm", "safety_radius_mm", "sphere_radius_mm",
                    "positives_per_aneurysm", "min_negatives_per_series", "mined_per_point"):
            require(getattr(self, key) >= 0, key, f"must not be negative, got {getattr(self, key)}")
        require(0.0 <= self.hard_negative_fraction <= 1.0, "hard_negative_fraction",
                f"a share in [0, 1], got {self.hard_negative_fraction}")
        require(0.0 < self.hard_negative_percentile <= 100.0, "hard_negative_percentile",
                f"a percentile in (0, 100], got {self.hard_negative_percentile}")
        unknown = [m for m in self.hard_negative_dark_modalities if m not in MODALITIES]
        require(not unknown, "hard_negative_dark_modalities",
                f"unknown modality {unknown}; expected some of {list(MODALITIES)}")
        if self.region_box_mm is not None:
            require(len(self.region_box_mm) == 3 and min(self.region_box_mm) > 0, "region_box_mm",
                    f"three positive sizes (mm) or null, got {self.region_box_mm}")
