"""Acquisition grids: where a synthetic series' voxels are, in DICOM terms, per preset, modality and plane.

All numbers that end up in DICOM decimal strings (positions, cosines, spacings) are rounded here, once, so the
truth :class:`~rsna_aneurysm.volume.Volume` holds exactly what the files say.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ...volume import Volume
from .anatomy import rotation_matrix

PRESETS = ("tiny", "small", "full", "bench")
PLANES = ("axial", "coronal", "sagittal")
POS_DECIMALS = 5  # ImagePositionPatient
COS_DECIMALS = 8  # ImageOrientationPatient
SPACING_DECIMALS = 6

# (row cosine, column cosine) of the untilted planes, as a radiology scanner writes them.
PLANE_COSINES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


@dataclass(frozen=True)
class PresetSize:
    """Matrix and slice-count ranges of a preset (``None`` slices: derived from spacing and coverage)."""

    pixels: tuple[int, ...]  # in-plane matrix sizes to choose from
    slices: tuple[int, int] | None


PRESET_SIZES: dict[str, PresetSize] = {
    "tiny": PresetSize(pixels=(32, 36, 40, 44, 48), slices=(20, 40)),
    "small": PresetSize(pixels=(96, 104, 112, 120, 128), slices=(64, 128)),
    "full": PresetSize(pixels=(512,), slices=None),
    "bench": PresetSize(pixels=(), slices=None),  # from spacing and field of view: see _bench_coverage_and_spacing
}
# ``bench``: native-like spacing on a field of view cropped to the head, per modality. In-plane pixel (mm),
# in-plane field of view (mm), slice spacing (mm) and coverage along the slice normal (mm).
BENCH_IN_PLANE_MM: dict[str, tuple[float, float]] = {
    "CTA": (0.6, 0.75), "MRA": (0.6, 0.8), "MRI T2": (0.6, 0.8), "MRI T1post": (0.7, 0.8)}
BENCH_FOV_MM = (185.0, 205.0)
BENCH_SLICE_MM: dict[str, tuple[float, float]] = {
    "CTA": (0.6, 0.9), "MRA": (0.6, 0.9), "MRI T2": (3.0, 5.0), "MRI T1post": (0.9, 1.0)}
BENCH_COVERAGE_MM: dict[str, tuple[float, float]] = {
    "CTA": (80.0, 95.0), "MRA": (65.0, 80.0), "MRI T2": (110.0, 130.0), "MRI T1post": (85.0, 100.0)}


@dataclass(frozen=True)
class Grid:
    """A stack of parallel slices: DICOM geometry, already rounded to what the files hold.

    ``origin`` is the ImagePositionPatient of slice ``k = 0`` in sorted order (ascending along ``normal``).
    ``row_spacing`` is PixelSpacing[0] (between rows, along ``col_cos``), ``col_spacing`` PixelSpacing[1].
    """

    rows: int
    cols: int
    n_slices: int
    row_spacing: float
    col_spacing: float
    slice_spacing: float
    slice_thickness: float
    row_cos: tuple[float, float, float]
    col_cos: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(np.asarray(self.row_cos), np.asarray(self.col_cos))
        return n / np.linalg.norm(n)

    @property
    def direction(self) -> np.ndarray:
        return np.column_stack([np.asarray(self.row_cos), np.asarray(self.col_cos), self.normal])

    @property
    def spacing_ijk(self) -> tuple[float, float, float]:
        return (self.col_spacing, self.row_spacing, self.slice_spacing)

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        return (self.n_slices, self.rows, self.cols)

    def ipp(self, k: int) -> tuple[float, float, float]:
        """ImagePositionPatient of sorted slice ``k``, rounded as written."""
        p = np.asarray(self.origin) + k * self.slice_spacing * self.normal
        return tuple(round(float(v), POS_DECIMALS) for v in p)

    def index_affine(self) -> np.ndarray:
        """4x4 (i, j, k, 1) -> LPS world."""
        a = np.eye(4)
        a[:3, :3] = self.direction * np.asarray(self.spacing_ijk)[None, :]
        a[:3, 3] = self.origin
        return a

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        a = self.index_affine()
        return np.linalg.solve(a[:3, :3], (np.asarray(xyz, dtype=np.float64) - a[:3, 3]).T).T

    def volume(self, array: np.ndarray, modality: str | None = None, meta: dict | None = None) -> Volume:
        return Volume(array=array, spacing=self.spacing_ijk, origin=self.origin, direction=self.direction,
                      modality=modality, meta=dict(meta or {}))

    def shifted(self, steps_ijk: np.ndarray) -> Grid:
        """The same grid moved by whole voxels along i, j, k (keeps every slice position exact)."""
        o = np.asarray(self.origin) + self.direction @ (np.asarray(self.spacing_ijk) * np.asarray(steps_ijk))
        return replace(self, origin=tuple(round(float(v), POS_DECIMALS) for v in o))

    def with_slices(self, n_slices: int) -> Grid:
        return replace(self, n_slices=int(n_slices))


def _round_cos(v: np.ndarray) -> tuple[float, float, float]:
    return tuple(round(float(x), COS_DECIMALS) + 0.0 for x in v)


def plane_cosines(plane: str, tilt: np.ndarray | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Row and column cosines of ``plane``, optionally rotated by ``tilt`` (degrees about x, y, z), rounded."""
    if plane not in PLANE_COSINES:
        raise ValueError(f"unknown plane {plane!r}; expected one of {PLANES}")
    row, col = (np.asarray(v) for v in PLANE_COSINES[plane])
    if tilt is not None:
        r = rotation_matrix(np.asarray(tilt, dtype=np.float64))
        row, col = r @ row, r @ col
    return _round_cos(row), _round_cos(col)


def _coverage_and_spacing(preset: str, modality: str, plane: str, rng: np.random.Generator
                          ) -> tuple[int, int, float, float, int, float, float]:
    """(rows, cols, row spacing, col spacing, slices, slice spacing, slice thickness) before rounding."""
    if preset == "bench":
        return _bench_coverage_and_spacing(modality, rng)
    slab = modality == "MRA"
    along = {"axial": (150.0, 190.0), "coronal": (150.0, 185.0), "sagittal": (130.0, 160.0)}[plane]
    coverage = rng.uniform(85.0, 115.0) if slab else rng.uniform(*along)
    size = PRESET_SIZES[preset]
    if preset == "full":
        if modality == "CTA":
            cols = 512
            px = rng.uniform(0.4, 0.5)
        else:
            cols = int(rng.choice([512, 512, 384, 256]))
            px = rng.uniform(200.0, 240.0) / cols
        if modality == "CTA":
            slice_sp = rng.uniform(0.5, 0.8)
        elif modality == "MRA":
            slice_sp = rng.uniform(0.5, 0.8)
        elif modality == "MRI T2":
            slice_sp = rng.uniform(4.0, 5.0)
        else:
            slice_sp = float(rng.choice([1.0, 1.0, 5.0]))
        n = int(np.clip(round(coverage / slice_sp), 16, 400))
    else:
        cols = int(rng.choice(size.pixels))
        px = rng.uniform(215.0, 240.0) / cols
        lo, hi = size.slices
        n = int(rng.integers(lo, hi + 1))
        slice_sp = coverage / n
    rows = cols
    if rng.random() < 0.3:  # a rectangular matrix: catches row/column mix-ups downstream
        rows = cols - int(rng.choice([4, 8])) * (cols // 32 if preset != "tiny" else 1)
    row_sp = px
    col_sp = px * (rng.uniform(1.0, 1.06) if rng.random() < 0.15 else 1.0)
    thickness = slice_sp * (rng.choice([1.0, 1.0, 1.25, 2.0]) if slice_sp < 1.5 else 1.0)
    return rows, cols, row_sp, col_sp, n, slice_sp, float(thickness)


def _bench_coverage_and_spacing(modality: str, rng: np.random.Generator
                                ) -> tuple[int, int, float, float, int, float, float]:
    """``bench``: native-like pixels and slices (thin for CTA, MRA, 3D T1post; 3-5 mm for T2) around the head."""
    px = float(rng.uniform(*BENCH_IN_PLANE_MM[modality]))
    cols = int(round(rng.uniform(*BENCH_FOV_MM) / px / 4.0)) * 4
    rows = cols - 16 if rng.random() < 0.3 else cols
    slice_sp = float(rng.uniform(*BENCH_SLICE_MM[modality]))
    n = int(round(rng.uniform(*BENCH_COVERAGE_MM[modality]) / slice_sp))
    col_sp = px * (rng.uniform(1.0, 1.04) if rng.random() < 0.15 else 1.0)
    thickness = slice_sp * (float(rng.choice([1.0, 1.25, 1.5])) if slice_sp < 1.5 else 1.0)
    return rows, cols, px, col_sp, n, slice_sp, thickness


def plan_grid(preset: str, modality: str, plane: str, center: np.ndarray, rng: np.random.Generator,
              tilt: bool = False) -> Grid:
    """A grid for one series centred on world point ``center`` (head centre, or the circle of Willis for MRA)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
    rows, cols, row_sp, col_sp, n, slice_sp, thick = _coverage_and_spacing(preset, modality, plane, rng)
    angles = rng.uniform(-10.0, 10.0, size=3) if tilt else None
    row_cos, col_cos = plane_cosines(plane, angles)
    row_sp, col_sp, slice_sp = (round(float(v), SPACING_DECIMALS) for v in (row_sp, col_sp, slice_sp))
    grid = Grid(rows=rows, cols=cols, n_slices=n, row_spacing=row_sp, col_spacing=col_sp, slice_spacing=slice_sp,
                slice_thickness=round(thick, SPACING_DECIMALS), row_cos=row_cos, col_cos=col_cos,
                origin=(0.0, 0.0, 0.0))
    half = (np.array([cols, rows, n], dtype=np.float64) - 1.0) / 2.0
    offset = np.concatenate([rng.uniform(-6.0, 6.0, size=2), [0.0]])
    origin = np.asarray(center) + grid.direction @ (np.asarray(grid.spacing_ijk) * (offset - half))
    return replace(grid, origin=tuple(round(float(v), POS_DECIMALS) for v in origin))


def fit_points(grid: Grid, points: np.ndarray, margin_vox: float = 1.5) -> Grid:
    """Shift (by whole voxels) or extend ``grid`` so every world point lies at least ``margin_vox`` inside it."""
    if len(points) == 0:
        return grid
    idx = grid.world_to_index(np.asarray(points, dtype=np.float64).reshape(-1, 3))
    size = np.array([grid.cols, grid.rows, grid.n_slices], dtype=np.float64)
    lo, hi = idx.min(axis=0) - margin_vox, idx.max(axis=0) + margin_vox
    steps = np.zeros(3)
    for a in range(3):
        if hi[a] - lo[a] > size[a] - 1:
            if a < 2:
                raise ValueError(f"points span {hi[a] - lo[a]:.1f} voxels, more than the grid's {size[a]:.0f}")
            grid = grid.with_slices(int(np.ceil(hi[a] - lo[a])) + 1)
            size[a] = grid.n_slices
        if lo[a] < 0:
            steps[a] = np.floor(lo[a])
        elif hi[a] > size[a] - 1:
            steps[a] = np.ceil(hi[a] - (size[a] - 1))
    return grid.shifted(steps) if np.any(steps) else grid
