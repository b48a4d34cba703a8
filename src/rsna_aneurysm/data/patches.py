"""Patch geometry and sampling: crop a patch, map points into it, label it, draw positive and negative centres.

All coordinates here are continuous voxel indices of the preprocessed volume in array order ``(k, j, i)``.
Patch voxel ``p`` (per axis) sits at volume index ``center + (p - size // 2) * scale``, where
``scale = patch_spacing / volume_spacing``; with ``scale == 1`` that is a plain crop (zero-padded at borders).
"""

from __future__ import annotations

import numpy as np

from ..constants import LABEL_COLS, N_LABELS

AP_INDEX = LABEL_COLS.index("Aneurysm Present")


def crop_patch(array: np.ndarray, center: np.ndarray, size: tuple[int, int, int],
               scale: np.ndarray | tuple[float, float, float] = (1.0, 1.0, 1.0), order: int = 1) -> np.ndarray:
    """The ``size`` patch around ``center`` (k, j, i); zero outside the volume; resampled when scale != 1."""
    center = np.rint(np.asarray(center, dtype=np.float64)).astype(np.int64)
    size_a = np.asarray(size, dtype=np.int64)
    scale = np.asarray(scale, dtype=np.float64)
    if np.allclose(scale, 1.0):
        start = center - size_a // 2
        out = np.zeros(tuple(size_a), dtype=array.dtype)
        src_lo = np.maximum(start, 0)
        src_hi = np.minimum(start + size_a, array.shape)
        if np.any(src_hi <= src_lo):
            return out
        dst_lo = src_lo - start
        dst_hi = dst_lo + (src_hi - src_lo)
        out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi))] = \
            array[tuple(slice(a, b) for a, b in zip(src_lo, src_hi))]
        return out
    from scipy.ndimage import map_coordinates

    # Read only the bounding box of the sample points, so a large volume is never touched as a whole.
    axes = [center[d] + (np.arange(size_a[d]) - size_a[d] // 2) * scale[d] for d in range(3)]
    lo = np.array([max(int(np.floor(a.min())) - 1, 0) for a in axes])
    hi = np.array([min(int(np.ceil(a.max())) + 2, array.shape[d]) for d, a in enumerate(axes)])
    if np.any(hi <= lo):
        return np.zeros(tuple(size_a), dtype=array.dtype)
    sub = np.asarray(array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)
    grid = np.meshgrid(*[a - lo[d] for d, a in enumerate(axes)], indexing="ij")
    out = map_coordinates(sub, grid, order=order, mode="constant", cval=0.0)
    return out.astype(array.dtype, copy=False)


def to_patch_coords(points: np.ndarray, center: np.ndarray, size: tuple[int, int, int],
                    scale: np.ndarray | tuple[float, float, float]) -> np.ndarray:
    """Volume indices (N, 3) -> patch indices (N, 3) for the patch around ``center`` (rounded, as crop_patch)."""
    center = np.rint(np.asarray(center, dtype=np.float64))
    return (np.asarray(points, dtype=np.float64).reshape(-1, 3) - center) / np.asarray(scale, dtype=np.float64) \
        + np.asarray(size, dtype=np.float64)[None, :] // 2


def inside_patch(points_patch: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Which patch-coordinate points (N, 3) fall inside the patch box."""
    p = np.asarray(points_patch).reshape(-1, 3)
    return np.all((p >= -0.5) & (p <= np.asarray(size)[None, :] - 0.5), axis=1)


def patch_labels(points_patch: np.ndarray, location_index: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """14-label vector of a patch: each location with an aneurysm centre inside, and Aneurysm Present."""
    labels = np.zeros(N_LABELS, dtype=np.uint8)
    inside = inside_patch(points_patch, size)
    for loc in np.asarray(location_index)[inside]:
        labels[int(loc)] = 1
    if inside.any():
        labels[AP_INDEX] = 1
    return labels


def sphere_mask(size: tuple[int, int, int], points_patch: np.ndarray, radius_vox: np.ndarray) -> np.ndarray:
    """Boolean (D, H, W) mask: union of ellipsoids (spheres in mm) of ``radius_vox`` (per axis) around points."""
    mask = np.zeros(size, dtype=bool)
    r = np.asarray(radius_vox, dtype=np.float64)
    for p in np.asarray(points_patch, dtype=np.float64).reshape(-1, 3):
        lo = np.maximum(np.floor(p - r).astype(int), 0)
        hi = np.minimum(np.ceil(p + r).astype(int) + 1, size)
        if np.any(hi <= lo):
            continue
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        d2 = ((zz - p[0]) / r[0]) ** 2 + ((yy - p[1]) / r[1]) ** 2 + ((xx - p[2]) / r[2]) ** 2
        mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= d2 <= 1.0
    return mask


def box_distance_mm(centers: np.ndarray, points: np.ndarray, half_extent_mm: np.ndarray,
                    spacing_kji: np.ndarray) -> np.ndarray:
    """Per centre (N, 3), the smallest distance in mm from any of ``points`` (A, 3) to the patch box around it.

    Zero when a point lies inside the box; inf when there are no points. A negative patch keeps a safety radius
    when this distance exceeds it: no aneurysm lies in the patch or within the radius of its border.
    """
    c = np.asarray(centers, dtype=np.float64).reshape(-1, 3)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return np.full(len(c), np.inf)
    sp = np.asarray(spacing_kji, dtype=np.float64)
    gap = np.abs(pts[None, :, :] - np.rint(c)[:, None, :]) * sp - np.asarray(half_extent_mm, dtype=np.float64)
    return np.sqrt((np.maximum(gap, 0.0) ** 2).sum(axis=2)).min(axis=1)


def jittered_centers(point: np.ndarray, n: int, jitter_vox: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` integer centres uniformly within +-``jitter_vox`` (per axis) of ``point`` (k, j, i)."""
    offs = rng.uniform(-1.0, 1.0, size=(n, 3)) * np.asarray(jitter_vox, dtype=np.float64)[None, :]
    return np.rint(np.asarray(point, dtype=np.float64)[None, :] + offs).astype(np.int64)


def sample_far_centers(candidates: np.ndarray, n: int, avoid: np.ndarray, half_extent_mm: np.ndarray,
                       spacing_kji: np.ndarray, safety_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` distinct rows of ``candidates`` (M, 3) whose patch box is farther than ``safety_mm`` from
    every ``avoid`` point, in random order; fewer come back when the candidates run out.
    """
    if n <= 0 or len(candidates) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    cand = np.unique(np.asarray(candidates, dtype=np.int64).reshape(-1, 3), axis=0)
    cand = cand[rng.permutation(len(cand))]
    keep = box_distance_mm(cand, avoid, half_extent_mm, spacing_kji) > safety_mm
    return cand[keep][:n]


def random_voxels(mask: np.ndarray, n: int, rng: np.random.Generator, max_tries: int = 20) -> np.ndarray:
    """About ``n`` random voxel indices (k, j, i) where ``mask`` is true, by rejection inside its bounding box.

    Never lists all mask voxels, so memory stays bounded for large volumes.
    """
    nz = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != d))) for d in range(3)]
    if any(len(a) == 0 for a in nz):
        return np.zeros((0, 3), dtype=np.int64)
    lo = np.array([a[0] for a in nz])
    hi = np.array([a[-1] + 1 for a in nz])
    out: list[np.ndarray] = []
    for _ in range(max_tries):
        pts = rng.integers(lo, hi, size=(max(2 * n, 64), 3))
        out.append(pts[mask[pts[:, 0], pts[:, 1], pts[:, 2]]])
        if sum(len(o) for o in out) >= n:
            break
    return np.concatenate(out, axis=0)[:n]



def deep_mask(mask: np.ndarray, spacing_kji: np.ndarray, depth_mm: float, step: int = 4) -> np.ndarray:
    """Voxels of ``mask`` at least ``depth_mm`` from its outside (distance computed on a ``step``-times coarser grid).

    Keeps hard negatives off the skull (the brightest thing in a CT head) and inside the head, where the vessels
    are; the coarse grid keeps the distance transform cheap on whole-head volumes.
    """
    from scipy.ndimage import distance_transform_edt

    if depth_mm <= 0:
        return mask.astype(bool, copy=False)
    small = mask[::step, ::step, ::step]
    dist = distance_transform_edt(np.pad(small, 1), sampling=np.asarray(spacing_kji, dtype=np.float64) * step)
    deep_small = dist[1:-1, 1:-1, 1:-1] >= depth_mm
    ix = np.ix_(*[np.minimum(np.arange(n) // step, deep_small.shape[d] - 1) for d, n in enumerate(mask.shape)])
    return deep_small[ix] & mask.astype(bool, copy=False)
