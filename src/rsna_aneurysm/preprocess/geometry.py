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

# Most voxels a resampled grid may have (default of ``PreprocessConfig.max_voxels`` and of ``resample``): 2e8 voxels
# are 800 MB as float32. A head CTA is ~15e6 voxels at 1 mm (~120e6 at 0.5 mm); a 512x512x1000 series at
# 0.4 x 0.4 x 0.5 mm is 205 x 205 x 500 mm, ~21e6 at 1 mm, and even a 400 x 400 mm field over 600 mm (head to
# aortic arch, uncropped) is ~96e6, so real series pass at the kit's spacings (1 mm, the finest any shipped config
# uses, and the budget's coarser levels). The loader's own plausibility ranges still admit a header asking for
# ~1e9 voxels (1 m along each axis); such a header, or one claiming e.g. 100 mm pixels, fails here before anything
# is allocated.
DEFAULT_MAX_VOXELS = 200_000_000


class GridTooLargeError(ValueError):
    """The resampled grid would exceed the voxel limit (raised before any allocation)."""


def check_grid_size(size, max_voxels: int | None, source: str | None = None,
                    setting: str = "PreprocessConfig.max_voxels") -> None:
    """Raise :class:`GridTooLargeError` when the grid ``size`` (i, j, k) has more than ``max_voxels`` voxels
    (None: no limit)."""
    if max_voxels is None:
        return
    n = int(np.prod([int(s) for s in size], dtype=object))
    if n > max_voxels:
        raise GridTooLargeError(
            f"resampled grid {'x'.join(str(int(s)) for s in size)} (i,j,k) has {n:.3g} voxels, over the limit "
            f"{setting}={max_voxels:.3g} (~{n * 4 / 1e9:.1f} GB as float32)"
            f"{'; source ' + str(source) if source else ''}: implausible geometry (e.g. PixelSpacing in the header)")


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
                   max_voxels: int | None = None) -> tuple[tuple, tuple, tuple]:
    """(origin, spacing, size_ijk) of the identity-direction grid at ``spacing`` covering ``vol``'s voxel centres,
    optionally only the part inside the world box ``bounds = (lo_xyz, hi_xyz)``.

    Raises :class:`GridTooLargeError` when the grid (after ``bounds``) has more than ``max_voxels`` voxels (None:
    no check here)."""
    n = np.asarray(vol.shape_ijk) - 1
    corners = np.array([[a, b, c] for a in (0, n[0]) for b in (0, n[1]) for c in (0, n[2])], dtype=np.float64)
    world = vol.index_to_world(corners)
    lo, hi = world.min(0), world.max(0)
    if bounds is not None:
        lo, hi = np.maximum(lo, bounds[0]), np.minimum(hi, bounds[1])
        if np.any(hi < lo):
            raise ValueError(f"bounds {bounds} do not overlap the volume ({lo}..{hi})")
    sp = np.asarray(spacing, dtype=np.float64)
    extent = (hi - lo) / sp + 1e-6
    if not np.all(np.isfinite(extent)):
        raise GridTooLargeError(f"resampled grid has a non-finite extent {extent.tolist()} at spacing {sp.tolist()}"
                                f"{'; source ' + str(vol.meta.get('source')) if vol.meta.get('source') else ''}")
    size = [int(e) + 1 for e in np.floor(extent)]  # Python ints: no overflow before the check
    check_grid_size(size, max_voxels, vol.meta.get("source"))
    return tuple(lo), tuple(sp), tuple(size)


def resample(vol: Volume, spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0), interpolator: str = "linear",
             default_value: float | None = None, reference: Volume | None = None, dtype=np.float32,
             bounds: tuple | None = None, max_voxels: int | None = DEFAULT_MAX_VOXELS) -> Volume:
    """Resample onto an identity-direction grid at ``spacing`` covering ``vol`` (or onto ``reference``'s grid).

    ``bounds`` (world ``(lo_xyz, hi_xyz)``) limits the grid to a box, e.g. the head (see ``mask.head_bounds``).
    ``default_value`` fills points outside the source (default: the volume's minimum, i.e. air).
    ``max_voxels`` bounds the output grid (None: unbounded); over it, :class:`GridTooLargeError` is raised before
    anything is allocated.
    """
    if interpolator not in _INTERPOLATORS:
        raise ValueError(f"unknown interpolator {interpolator!r}; choose from {sorted(_INTERPOLATORS)}")
    if reference is not None:
        origin, sp, size, direction = reference.origin, reference.spacing, reference.shape_ijk, reference.direction
        check_grid_size(size, max_voxels, vol.meta.get("source"))
    else:
        origin, sp, size = canonical_grid(vol, spacing if spacing is not None else vol.spacing, bounds, max_voxels)
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
