"""Grids of the two-stage pipeline: the coarse whole-head view the region finder reads, and the region crop.

Both are axis-aligned grids in world LPS millimetres: voxel ``(k, j, i)`` of a grid sits at
``origin + spacing * (i, j, k)``. A :class:`Grid` samples any :class:`~rsna_aneurysm.volume.Volume` (any direction)
by trilinear interpolation; when the volume is canonical and the grid falls on its voxels at the same spacing (the
usual region crop of a preprocessed volume), sampling is an exact copy. Mapping between grid indices and world
positions is exact both ways, so a heatmap peak in a crop lands on its world position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..volume import Volume


@dataclass(frozen=True)
class Grid:
    """An axis-aligned (identity-direction) grid: ``shape`` in (k, j, i), ``origin`` and ``spacing`` in (x, y, z)."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]

    @classmethod
    def centred(cls, center: np.ndarray, shape_kji: tuple[int, int, int], spacing: float | tuple) -> Grid:
        """The grid of ``shape_kji`` voxels at ``spacing`` whose centre is world point ``center``."""
        sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
        n_ijk = np.asarray(shape_kji[::-1], dtype=np.float64)
        origin = np.asarray(center, dtype=np.float64) - sp * (n_ijk - 1.0) / 2.0
        return cls(tuple(float(v) for v in origin), tuple(float(v) for v in sp), tuple(int(s) for s in shape_kji))

    @property
    def center(self) -> np.ndarray:
        n_ijk = np.asarray(self.shape[::-1], dtype=np.float64)
        return np.asarray(self.origin) + np.asarray(self.spacing) * (n_ijk - 1.0) / 2.0

    @property
    def size_mm(self) -> np.ndarray:
        """Extent along (x, y, z) in mm (voxel count times spacing)."""
        return np.asarray(self.shape[::-1], dtype=np.float64) * np.asarray(self.spacing)

    def index_to_world(self, kji: np.ndarray) -> np.ndarray:
        """Continuous grid indices ``(N, 3)`` in ``(k, j, i)`` -> world ``(N, 3)`` in (x, y, z)."""
        p = np.asarray(kji, dtype=np.float64).reshape(-1, 3)[:, ::-1]
        return np.asarray(self.origin) + p * np.asarray(self.spacing)

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """World ``(N, 3)`` -> continuous grid indices ``(N, 3)`` in ``(k, j, i)``."""
        p = (np.asarray(xyz, dtype=np.float64).reshape(-1, 3) - np.asarray(self.origin)) / np.asarray(self.spacing)
        return p[:, ::-1]

    def contains(self, xyz: np.ndarray, margin_mm: float = 0.0) -> np.ndarray:
        """Which world points ``(N, 3)`` lie inside the grid's box (shrunk by ``margin_mm``)."""
        idx = self.world_to_index(xyz)
        lo = -0.5 + margin_mm / np.asarray(self.spacing)[::-1]
        hi = np.asarray(self.shape) - 0.5 - margin_mm / np.asarray(self.spacing)[::-1]
        return np.all((idx >= lo) & (idx <= hi), axis=1)

    def volume(self, array: np.ndarray, like: Volume | None = None) -> Volume:
        """``array`` (this grid's shape) as a Volume on this grid (modality and meta from ``like``)."""
        if tuple(array.shape) != tuple(self.shape):
            raise ValueError(f"array shape {array.shape} is not the grid's {self.shape}")
        return Volume(array=array, spacing=self.spacing, origin=self.origin, direction=np.eye(3),
                      modality=None if like is None else like.modality, meta={} if like is None else dict(like.meta))

    def snapped(self, vol: Volume) -> Grid:
        """This grid moved by less than a voxel so its voxels fall on ``vol``'s (when both are axis-aligned at the
        same spacing): sampling then copies voxels instead of interpolating."""
        if not _aligned(vol, self.spacing):
            return self
        idx = vol.world_to_index(np.asarray(self.origin)[None, :])[0]
        origin = vol.index_to_world(np.rint(idx)[None, :])[0]
        return Grid(tuple(float(v) for v in origin), self.spacing, self.shape)


def _aligned(vol: Volume, spacing: tuple[float, float, float]) -> bool:
    return bool(np.allclose(vol.direction, np.eye(3), atol=1e-6)
                and np.allclose(vol.spacing, spacing, rtol=0, atol=1e-6))


def sample(vol: Volume, grid: Grid, prefilter: bool = True, fill: float = 0.0) -> np.ndarray:
    """``vol`` resampled onto ``grid`` (float32, ``grid.shape``); ``fill`` outside the volume.

    Exact copy when the grid falls on the volume's voxels; otherwise trilinear, after averaging blocks of voxels
    when the grid is much coarser than the volume (``prefilter``), so a coarse view is not aliased.
    """
    src = np.asarray(vol.array)
    if _aligned(vol, grid.spacing):
        start = vol.world_to_index(np.asarray(grid.origin)[None, :])[0]
        if np.allclose(start, np.rint(start), atol=1e-4):
            return _copy_box(src, np.rint(start[::-1]).astype(np.int64), grid.shape, fill)
    import torch
    import torch.nn.functional as F

    factor = np.ones(3, dtype=np.int64)
    if prefilter:
        ratio = np.asarray(grid.spacing) / np.asarray(vol.spacing)  # (i, j, k); rotation-free estimate
        factor = np.maximum(np.floor(ratio + 1e-6).astype(np.int64), 1)[::-1]  # (k, j, i)
    # World position of every grid voxel -> continuous index of the source volume.
    axes = [np.arange(n, dtype=np.float64) for n in grid.shape]
    kk, jj, ii = np.meshgrid(*axes, indexing="ij")
    world = grid.index_to_world(np.stack([kk.ravel(), jj.ravel(), ii.ravel()], axis=1))
    ijk = vol.world_to_index(world)  # (N, 3) i, j, k
    del kk, jj, ii, world
    t = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32))[None, None]
    if np.any(factor > 1):
        t = F.avg_pool3d(t, kernel_size=tuple(int(f) for f in factor), stride=tuple(int(f) for f in factor),
                         ceil_mode=True, count_include_pad=False)
        f_ijk = factor[::-1].astype(np.float64)
        ijk = (ijk - (f_ijk - 1.0) / 2.0) / f_ijk
    size_ijk = np.asarray(t.shape[2:][::-1], dtype=np.float64)
    norm = 2.0 * ijk / np.maximum(size_ijk - 1.0, 1.0) - 1.0  # align_corners=True convention
    g = torch.from_numpy(norm.astype(np.float32)).view(1, *grid.shape, 3)
    fill_t = float(fill)
    out = F.grid_sample(t - fill_t, g, mode="bilinear", padding_mode="zeros", align_corners=True) + fill_t
    return out[0, 0].numpy()


def _copy_box(src: np.ndarray, start_kji: np.ndarray, shape: tuple[int, int, int], fill: float) -> np.ndarray:
    out = np.full(shape, fill, dtype=np.float32)
    lo = np.maximum(start_kji, 0)
    hi = np.minimum(start_kji + np.asarray(shape), src.shape)
    if np.any(hi <= lo):
        return out
    dst = lo - start_kji
    out[tuple(slice(a, a + (b - c)) for a, b, c in zip(dst, hi, lo))] = \
        src[tuple(slice(a, b) for a, b in zip(lo, hi))]
    return out


def mask_box(mask: np.ndarray, vol: Volume) -> tuple[np.ndarray, np.ndarray] | None:
    """World (min, max) corners of the voxels where ``mask`` is set (canonical or not: all 8 corners mapped)."""
    m = np.asarray(mask) > 0
    if not m.any():
        return None
    lo, hi = [], []
    for axis in range(3):
        idx = np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != axis)))
        lo.append(idx[0])
        hi.append(idx[-1])
    corners = np.array([[k, j, i] for k in (lo[0], hi[0]) for j in (lo[1], hi[1]) for i in (lo[2], hi[2])],
                       dtype=np.float64)
    world = vol.index_to_world(corners[:, ::-1])
    return world.min(axis=0), world.max(axis=0)


def head_box(vol: Volume, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """World (lo, hi) of the head mask, or of the whole volume when there is no (or an empty) mask."""
    box = mask_box(mask, vol) if mask is not None else None
    if box is None:
        n = np.asarray(vol.array.shape[::-1], dtype=np.float64)
        lo = vol.index_to_world(np.zeros((1, 3)))[0]
        hi = vol.index_to_world((n - 1.0)[None, :])[0]
        box = (np.minimum(lo, hi), np.maximum(lo, hi))
    return box


def view_grid(box: tuple[np.ndarray, np.ndarray], shape: tuple[int, int, int], spacing: float) -> Grid:
    """The region finder's coarse view: ``shape`` voxels at ``spacing`` mm, centred on the head box."""
    return Grid.centred((box[0] + box[1]) / 2.0, shape, spacing)
