"""Localizer annotations (SOPInstanceUID + pixel x, y, optional frame f) to voxel and world coordinates, and back.

A localizer row names a 2D image (a file, or a frame of a multi-frame file) and a pixel position in it. The
loaded volume knows, for each slice ``k``, which SOPInstanceUID and frame it came from (``meta["sop_uids"]`` and
``meta["frames"]``), so the mapping is exact: ``(i, j, k) = (x, y, k(sop, f))``, then the volume's affine. An
unknown SOPInstanceUID (or frame) is reported, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from ..constants import ID_COL, SOP_COL
from ..io.tables import parse_coordinates_text
from ..volume import Volume


class AnnotationError(ValueError):
    """A localizer row cannot be mapped: malformed coordinates, or a SOPInstanceUID/frame the series lacks."""


class UnknownSOPError(AnnotationError):
    """The SOPInstanceUID (or frame) of a localizer is not a slice of the loaded volume."""


class OutsideImageError(AnnotationError):
    """A localizer's pixel position is not finite or lies outside its image (it would mark empty space)."""


def check_inside(vol: Volume, x: float, y: float) -> None:
    """:class:`OutsideImageError` unless pixel ``(x, y)`` is finite and inside the in-plane extent of ``vol``
    (``0 <= x < columns``, ``0 <= y < rows``; the array is ``(k, j, i)``)."""
    rows, cols = vol.array.shape[1], vol.array.shape[2]
    if not (np.isfinite(x) and np.isfinite(y)):
        raise OutsideImageError(f"localizer pixel ({x}, {y}) is not finite")
    if not (0 <= x < cols and 0 <= y < rows):
        raise OutsideImageError(f"localizer pixel ({x:g}, {y:g}) is outside the {cols}x{rows} image")


@dataclass(frozen=True)
class Localizer:
    sop: str
    x: float
    y: float
    frame: int | None = None


def parse_coordinates(text: str) -> tuple[float, float, int | None]:
    """``"{'x': 258.36, 'y': 261.36[, 'f': 12]}"`` -> ``(x, y, f or None)``.

    The checks of :func:`rsna_aneurysm.io.tables.parse_coordinates_text` (length cap, keys x/y/f only, finite
    numbers, f a non-negative integer); any failure is an :class:`AnnotationError`."""
    try:
        return parse_coordinates_text(text)
    except ValueError as e:
        raise AnnotationError(f"localizer coordinates: {e}") from None


def format_coordinates(x: float, y: float, f: int | None = None) -> str:
    """The competition's string form of a localizer position."""
    d: dict[str, float | int] = {"x": round(float(x), 2), "y": round(float(y), 2)}
    if f is not None:
        d["f"] = int(f)
    return str(d)


def slice_lookup(vol: Volume) -> dict[tuple[str, int | None], int]:
    """(SOPInstanceUID, frame) -> slice index k of ``vol``."""
    try:
        sops, frames = vol.meta["sop_uids"], vol.meta["frames"]
    except KeyError:
        raise AnnotationError("volume has no per-slice SOPInstanceUIDs (was it loaded from DICOM?)") from None
    return {(s, f): k for k, (s, f) in enumerate(zip(sops, frames))}


def localizer_to_index(vol: Volume, loc: Localizer, lookup: dict | None = None) -> np.ndarray:
    """Continuous voxel index (i, j, k) of a localizer in ``vol``."""
    lookup = lookup if lookup is not None else slice_lookup(vol)
    k = lookup.get((loc.sop, loc.frame))
    if k is None and loc.frame is None:
        # A multi-frame file annotated without 'f' is ambiguous unless it has a single frame in the volume.
        ks = [kk for (s, _), kk in lookup.items() if s == loc.sop]
        if len(ks) == 1:
            k = ks[0]
        elif ks:
            raise UnknownSOPError(f"SOPInstanceUID {loc.sop} is a multi-frame file ({len(ks)} frames kept) "
                                  "but the localizer has no frame index 'f'")
    if k is None:
        what = loc.sop if loc.frame is None else f"{loc.sop} frame {loc.frame}"
        series = vol.meta.get("series_uid", "?")
        raise UnknownSOPError(f"SOPInstanceUID {what} is not a slice of series {series}")
    return np.array([loc.x, loc.y, float(k)])


def localizer_to_world(vol: Volume, loc: Localizer, lookup: dict | None = None) -> np.ndarray:
    """LPS world position (mm) of a localizer."""
    return vol.index_to_world(localizer_to_index(vol, loc, lookup))


def world_to_localizer(vol: Volume, xyz: np.ndarray | list | tuple) -> Localizer:
    """The localizer an annotator would have written for world point ``xyz``: nearest slice, in-plane pixel x, y."""
    i, j, k = vol.world_to_index(xyz)
    n = vol.array.shape[0]
    kk = int(np.clip(np.rint(k), 0, n - 1))
    return Localizer(sop=vol.meta["sop_uids"][kk], x=float(i), y=float(j), frame=vol.meta["frames"][kk])


def map_localizers(vol: Volume, rows: pl.DataFrame) -> pl.DataFrame:
    """Map localizer rows of one series (train_localizers.csv columns) to voxel and world coordinates.

    Returns one row per input row with ``x, y, f, i, j, k, world_x, world_y, world_z`` and ``status`` ("ok" or the
    reason the row could not be mapped, with null coordinates).
    """
    lookup = slice_lookup(vol)
    out = []
    for r in rows.iter_rows(named=True):
        rec = {ID_COL: r.get(ID_COL), SOP_COL: r.get(SOP_COL), "location": r.get("location"), "x": None, "y": None,
               "f": None, "i": None, "j": None, "k": None, "world_x": None, "world_y": None, "world_z": None,
               "status": "ok"}
        try:
            x, y, f = parse_coordinates(r["coordinates"])
            rec.update(x=x, y=y, f=f)
            check_inside(vol, x, y)
            ijk = localizer_to_index(vol, Localizer(str(r[SOP_COL]), x, y, f), lookup)
            if not np.all(np.isfinite(ijk)):
                raise OutsideImageError(f"localizer voxel index {ijk.tolist()} is not finite")
            world = vol.index_to_world(ijk)
            rec.update(i=ijk[0], j=ijk[1], k=ijk[2], world_x=world[0], world_y=world[1], world_z=world[2])
        except AnnotationError as e:
            rec["status"] = str(e)
        out.append(rec)
    schema = {ID_COL: pl.Utf8, SOP_COL: pl.Utf8, "location": pl.Utf8, "x": pl.Float64, "y": pl.Float64,
              "f": pl.Int64, "i": pl.Float64, "j": pl.Float64, "k": pl.Float64, "world_x": pl.Float64,
              "world_y": pl.Float64, "world_z": pl.Float64, "status": pl.Utf8}
    return pl.DataFrame(out, schema=schema)
