"""Reorientation to the canonical orientation and resampling to a target spacing.

Canonical orientation: ``i`` towards the patient's left, ``j`` towards posterior, ``k`` towards superior
(direction = identity in LPS). Reorientation permutes and flips axes only, so it is exact; resampling (SimpleITK)
also removes any remaining obliqueness by sampling onto an identity-direction grid that covers the volume.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..volume import Volume

_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


def reorient_canonical(vol: Volume) -> Volume:
    """Permute/flip axes so each one points as close as possible to +x, +y, +z (LPS); exact, no interpolation.

    Per-slice provenance (``sop_uids``, ``frames``) no longer indexes ``k`` afterwards and is moved to
    ``meta["source_*"]`` keys together with the source geometry.
    """
    d = vol.direction
    perm = [-1, -1, -1]  # perm[new_axis] = old axis (i, j, k numbering)
    free = [0, 1, 2]
    # Assign greedily by the largest absolute cosine, so oblique volumes still get a unique mapping.
    for _ in range(3):
        old, world = max(((o, w) for o in free for w in range(3) if perm[w] < 0), key=lambda ow: abs(d[ow[1], ow[0]]))
        perm[world] = old
        free.remove(old)
    signs = np.array([np.sign(d[w, perm[w]]) or 1.0 for w in range(3)])
    arr = vol.array
    # Array axes are reversed relative to (i, j, k): array axis of ijk-axis a is 2 - a.
    arr = np.transpose(arr, [2 - perm[2], 2 - perm[1], 2 - perm[0]])
    flips = tuple(2 - w for w in range(3) if signs[w] < 0)
    if flips:
        arr = np.flip(arr, axis=flips)
    new_dir = d[:, perm] * signs[None, :]
    shape_ijk = vol.shape_ijk
    corner = np.zeros(3)
    for w in range(3):
        if signs[w] < 0:
            corner[perm[w]] = shape_ijk[perm[w]] - 1
    return Volume(array=np.ascontiguousarray(arr), spacing=tuple(np.asarray(vol.spacing)[perm]),
                  origin=tuple(vol.index_to_world(corner)), direction=new_dir, modality=vol.modality,
                  meta=_source_meta(vol))


def _source_meta(vol: Volume) -> dict:
    """Meta for a volume derived from ``vol`` on another grid: per-slice provenance (which no longer indexes ``k``)
    and the source geometry move to ``source_*`` keys."""
    meta = dict(vol.meta)
    for key in ("sop_uids", "frames"):
        if key in meta:
            meta["source_" + key] = meta.pop(key)
    meta.setdefault("source_geometry", {"spacing": list(vol.spacing), "origin": list(vol.origin),
                                        "direction": vol.direction.tolist(), "shape_ijk": list(vol.shape_ijk),
                                        "orientation": vol.orientation_code()})
    return meta


def canonical_grid(vol: Volume, spacing: tuple[float, float, float], bounds: tuple | None = None,
                   ) -> tuple[tuple, tuple, tuple]:
    """(origin, spacing, size_ijk) of the identity-direction grid at ``spacing`` covering ``vol``'s voxel centres,
    optionally only the part inside the world box ``bounds = (lo_xyz, hi_xyz)``."""
    n = np.asarray(vol.shape_ijk) - 1
    corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])], dtype=np.float64)
    world = vol.index_to_world(corners)
    lo, hi = world.min(0), world.max(0)
    if bounds is not None:
        lo, hi = np.maximum(lo, bounds[0]), np.minimum(hi, bounds[1])
        if np.any(hi < lo):
            raise ValueError(f"bounds {bounds} do not overlap the volume ({lo}..{hi})")
    sp = np.asarray(spacing, dtype=np.float64)
    size = np.floor((hi - lo) / sp + 1e-6).astype(int) + 1
    return tuple(lo), tuple(sp), tuple(int(s) for s in size)


def resample(vol: Volume, spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0), interpolator: str = "linear",
             default_value: float | None = None, reference: Volume | None = None, dtype=np.float32,
             bounds: tuple | None = None) -> Volume:
    """Resample onto an identity-direction grid at ``spacing`` covering ``vol`` (or onto ``reference``'s grid).

    ``bounds`` (world ``(lo_xyz, hi_xyz)``) limits the grid to a box, e.g. the head (see ``mask.head_bounds``).
    ``default_value`` fills points outside the source (default: the volume's minimum, i.e. air).
    """
    if interpolator not in _INTERPOLATORS:
        raise ValueError(f"unknown interpolator {interpolator!r}; choose from {sorted(_INTERPOLATORS)}")
    if reference is not None:
        origin, sp, size, direction = reference.origin, reference.spacing, reference.shape_ijk, reference.direction
    else:
        origin, sp, size = canonical_grid(vol, spacing if spacing is not None else vol.spacing, bounds)
        direction = np.eye(3)
    if default_value is None:
        default_value = float(vol.array.min()) if vol.array.size else 0.0
    src = vol.to_sitk()
    out_type = sitk.GetImageFromArray(np.zeros((1, 1, 1), dtype=dtype)).GetPixelID()
    img = sitk.Resample(src, [int(s) for s in size], sitk.Transform(), _INTERPOLATORS[interpolator],
                        [float(o) for o in origin], [float(s) for s in sp], [float(v) for v in np.ravel(direction)],
                        float(default_value), out_type)
    del src  # free the source copy before the output is copied out: bounds peak memory
    return Volume.from_sitk(img, modality=vol.modality, meta=_source_meta(vol))
