"""Read a competition series (one file per slice, or one multi-frame file) into a :class:`Volume`.

What makes this harder than ``ImageSeriesReader``, and what the loader does about it:
- slice order comes from ImagePositionPatient projected on the slice normal, never from InstanceNumber or file
  name;
- series may mix slice sizes or orientations (scouts, localizers): the majority geometry group is kept and the
  rest is named in a warning;
- multi-frame (enhanced) files describe frames in functional group sequences, or (at test time, where only a tag
  allow-list survives) only at top level; when spacing or orientation are missing everywhere they are guessed,
  and the volume is flagged (``meta["spacing_guessed"]``, ``meta["orientation_guessed"]``);
- rescale slope/intercept can change per slice and MONOCHROME1 is stored inverted;
- compressed transfer syntaxes need the ``codecs`` extra; the error says so (an unknown syntax is named by UID);
- hostile input: size limits (``max_slices``, ``max_frames``, ``max_bytes``, ``max_voxels``) are checked before any
  pixel is allocated or decoded (:class:`SeriesLimitError`); slices of other SeriesInstanceUIDs are dropped first
  (``meta["mixed_series"]``); truncated or undecodable slices and slices far from the rest (or at a non-finite
  position) are dropped when the rest is consistent (``meta["dropped_slices"]``), multi-frame files missing frames
  keep the complete ones (``meta["truncated"]``); implausible spacing or extent is a :class:`GeometryError`.

Only tags from the test-time allow-list (``constants.TEST_TAGS``) are required. This module does the series
(``load_series``, step by step below); ``io.dicom_slices`` reads one file's headers and one slice's pixels.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.errors import InvalidDicomError

from ..volume import Volume
from .dicom_slices import (
    DicomSeriesError,
    GeometryError,
    MissingTagError,
    PixelDecodeError,
    SeriesLimitError,
    Slice,
    UnsupportedTransferSyntaxError,
    decode_pixels,
    get_tag,
    read_file,
    read_into_int16,
)

__all__ = ["DicomSeriesError", "GeometryError", "LoadOptions", "MissingTagError", "PixelDecodeError",
           "SeriesLimitError", "UnsupportedTransferSyntaxError", "load_series"]

log = logging.getLogger(__name__)


@dataclass
class LoadOptions:
    """Settings of :func:`load_series`."""

    # When PixelSpacing is missing everywhere (flagged as guessed), the in-plane spacing is this field of view
    # (mm) over the larger matrix side: head scans cover about 200-240 mm whatever the matrix (512 px -> 0.45 mm,
    # 256 px -> 0.9 mm). Null: use fallback_pixel_spacing whatever the matrix.
    fallback_fov_mm: float | None = 230.0
    fallback_pixel_spacing: float = 0.5
    # Slice spacing (mm) assumed when neither positions, SpacingBetweenSlices nor SliceThickness tell it.
    fallback_slice_spacing: float = 1.0
    # Series with fewer slices than this (after dropping minority-geometry slices) are an error.
    min_slices: int = 2
    # Relative deviation of a slice gap from the median gap above which the spacing is reported irregular.
    irregular_tolerance: float = 0.2
    # Keep integer voxels (int16) when every slice's rescale is integral: half the memory of float32.
    keep_integer: bool = True
    # Parse plain single-frame files with the struct-based header walker (io.dicom_fast); pydicom otherwise.
    fast_headers: bool = True
    # A bad (truncated / undecodable) slice at either end of the stack is dropped; one inside it would leave a hole,
    # so it is filled by linear interpolation of its two good neighbours (geometry unchanged, flagged in
    # meta["filled_slices"]) for runs of at most max_filled_run slices. False: PixelDecodeError naming the file.
    fill_bad_slices: bool = True
    max_filled_run: int = 2
    # Limits against hostile input, all checked before any pixel is allocated or decoded (SeriesLimitError).
    # Total slices (files x frames) of a series: real head scans have at most ~2000.
    max_slices: int = 4000
    # Frames one file may declare (NumberOfFrames), refused from the header before the frames are parsed.
    max_frames: int = 4000
    # Total bytes of the folder's files on disk (stat, before reading anything): 2 GiB.
    max_bytes: int = 2 * 1024**3
    # Voxels of the output array (slices x rows x cols) before it is allocated: 4e8 = 1.6 GB of float32.
    max_voxels: int = 400_000_000
    # Plausible in-plane pixel spacing (mm); PixelSpacing outside it is a GeometryError. Real head scans stay under
    # ~2 mm, but the kit's `tiny` synthetic series (32-48 px over a 215-240 mm field) reach ~8 mm, hence 10.
    pixel_spacing_range: tuple[float, float] = (0.05, 10.0)
    # Plausible slice spacing (median gap between sorted slices, mm); outside it is a GeometryError.
    slice_spacing_range: tuple[float, float] = (0.05, 20.0)
    # A slice at either end further than this many median gaps from its neighbour is dropped as an odd slice.
    outlier_gap_factor: float = 5.0
    # Largest extent (mm) of the volume along any axis (slices along the normal, rows and columns in-plane).
    max_extent_mm: float = 1000.0


def load_series(folder: str | Path, options: LoadOptions | None = None, modality: str | None = None) -> Volume:
    """Load the DICOM series in ``folder`` into a Volume in LPS geometry.

    ``meta`` carries ``sop_uids`` and ``frames`` (per slice ``k``), ``series_uid``, ``patient_id``,
    ``dicom_modality``, ``spacing_guessed``, ``orientation_guessed``, ``positions_guessed``, ``irregular_spacing``,
    ``inverted`` (MONOCHROME1), ``mixed_series`` (False or the dropped SeriesInstanceUIDs), ``dropped_slices`` (file
    names, ``name[frame]`` for frames), ``truncated`` (+ ``truncated_frames``) and ``warnings``. Raises
    :class:`DicomSeriesError` (or a subclass) naming the folder or file when the series cannot be read into a
    trustworthy volume.
    """
    opts = options or LoadOptions()
    folder = Path(folder)
    meta: dict[str, Any] = {"warnings": [], "spacing_guessed": False, "orientation_guessed": False,
                            "positions_guessed": False, "irregular_spacing": False, "inverted": False,
                            "mixed_series": False, "dropped_slices": [], "filled_slices": [], "truncated": False}
    slices = _read_headers(folder, _list_files(folder, opts), opts, meta)
    slices = _keep_one_series(folder, slices, meta)
    slices = _keep_majority_geometry(slices, meta)
    first = slices[0]  # every slice now shares its size, orientation and in-plane spacing
    row_dir, col_dir, normal = _orientation(first, meta)
    ps = _pixel_spacing(first, opts, meta)
    _fill_positions(folder, slices, normal, opts, meta)
    slices = _drop_nonfinite_positions(folder, slices, opts, meta)
    if len(slices) < opts.min_slices:
        raise DicomSeriesError(f"{folder}: {len(slices)} usable slice(s), need at least {opts.min_slices}")
    slices, proj = _sort_along_normal(folder, slices, normal, opts, meta)
    slices, proj = _drop_far_slices(folder, slices, proj, opts, meta)
    bad = {k: s.bad for k, s in enumerate(slices) if s.bad is not None}  # found from the headers (truncated)
    fill: list[int] = []
    dropped: list[str] = []
    reasons = {_slice_name(slices[k]): r for k, r in bad.items()}
    if bad:
        keep, fill = _triage_bad(folder, slices, proj, bad, opts)
        dropped += [_slice_name(s) for s, k in zip(slices, keep) if not k]
        slices, proj = [s for s, k in zip(slices, keep) if k], proj[keep]
    dz = _slice_spacing(proj, opts, meta, folder)
    _check_extent(folder, first, ps, proj, opts)
    ds0 = slices[0].source  # the first sorted slice's header: series-level tags (read before pixels free it)
    array, failed = _read_pixels(folder, slices, opts, skip=set(fill))
    slices_before = slices
    if failed:  # decoding failed: the triage again, over every unusable slice
        unusable = {**{k: slices[k].bad or "unreadable" for k in fill}, **failed}
        keep, fill = _triage_bad(folder, slices, proj, unusable, opts)
        dropped += [_slice_name(s) for s, k in zip(slices, keep) if not k]
        slices, proj, array = [s for s, k in zip(slices, keep) if k], proj[keep], array[keep]
        meta["irregular_spacing"] = False
        dz = _slice_spacing(proj, opts, meta, folder)
    if failed:
        reasons.update({_slice_name(slices_before[k]): r for k, r in failed.items()})
    if reasons:
        _fill_from_neighbours(array, proj, fill)
        filled = [_slice_name(slices[k]) for k in fill]
        meta["dropped_slices"].extend(dropped)
        meta["filled_slices"] = filled
        why = "; ".join(f"{name}: {r}" for name, r in list(reasons.items())[:10])
        meta["warnings"].append(f"{len(reasons)} bad slice(s) ({why}): dropped {len(dropped)} at the ends "
                                f"({', '.join(dropped[:10]) or '-'}), filled {len(filled)} inside the stack from "
                                f"their neighbours ({', '.join(filled[:10]) or '-'})")
    if str(get_tag(ds0, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        lo, hi = array.min(), array.max()
        array = (hi + lo - array).astype(array.dtype, copy=False)
        meta["inverted"] = True
    meta.update(
        sop_uids=[s.sop for s in slices],
        frames=[s.frame for s in slices],
        series_uid=str(get_tag(ds0, "SeriesInstanceUID", folder.name)),
        patient_id=get_tag(ds0, "PatientID"),
        dicom_modality=get_tag(ds0, "Modality"),
        source=str(folder),
    )
    for w in meta["warnings"]:
        log.warning("%s: %s", folder, w)
    direction = np.stack([row_dir, col_dir, normal], axis=1)
    # PixelSpacing is (between rows, between columns): i (columns) steps by ps[1], j (rows) by ps[0].
    return Volume(array=array, spacing=(float(ps[1]), float(ps[0]), dz), origin=tuple(slices[0].ipp),
                  direction=direction, modality=modality, meta=meta)


def _list_files(folder: Path, opts: LoadOptions | None = None) -> list[Path]:
    """The folder's files (hidden ones left out), sorted by name; their total size is checked against
    ``max_bytes`` (stat only) before anything is read."""
    if not folder.exists():
        raise DicomSeriesError(f"{folder}: series folder does not exist")
    if not folder.is_dir():
        raise DicomSeriesError(f"{folder}: not a folder")
    files = sorted(p for p in (folder / n for n in os.listdir(folder)) if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DicomSeriesError(f"{folder}: empty series folder (no files)")
    if opts is not None:
        total = sum(p.stat().st_size for p in files)
        if total > opts.max_bytes:
            raise SeriesLimitError(f"{folder}: {len(files)} file(s) hold {total} bytes, over the limit of "
                                   f"{opts.max_bytes} bytes (LoadOptions.max_bytes)")
    return files


def _read_headers(folder: Path, files: list[Path], opts: LoadOptions, meta: dict[str, Any]) -> list[Slice]:
    """Every file's slices (pixels not decoded yet); a file that is not DICOM is skipped with a warning."""
    slices: list[Slice] = []
    for path in files:
        try:
            slices.extend(read_file(path, only_file=len(files) == 1, fast=opts.fast_headers,
                                    max_frames=opts.max_frames, meta=meta))
        except InvalidDicomError:
            meta["warnings"].append(f"skipped {path.name}: not a DICOM file")
        if len(slices) > opts.max_slices:
            raise SeriesLimitError(f"{folder}: more than {opts.max_slices} slices (reached {len(slices)} at "
                                   f"{path.name}), over the limit LoadOptions.max_slices")
    if not slices:
        raise DicomSeriesError(f"{folder}: no DICOM files among {len(files)} file(s)")
    return slices


def _slice_name(s: Slice) -> str:
    return s.path.name + ("" if s.frame is None else f"[{s.frame}]")


def _keep_one_series(folder: Path, slices: list[Slice], meta: dict[str, Any]) -> list[Slice]:
    """The slices of one SeriesInstanceUID: the folder's name when it is one of them, else the most common (ties:
    the larger UID string). The others are dropped, named in a warning and in ``meta["mixed_series"]``."""
    groups = Counter(s.series_uid for s in slices)
    if len(groups) == 1:
        return slices
    if folder.name in groups:
        best = folder.name
    else:
        best = max(groups.items(), key=lambda kv: (kv[1], kv[0] is not None, str(kv[0])))[0]
    dropped = {uid: n for uid, n in groups.items() if uid != best}
    kept = [s for s in slices if s.series_uid == best]
    gone = [s for s in slices if s.series_uid != best]
    names = sorted({_slice_name(s) for s in gone})
    kept_keys = {_geometry_key(s) for s in kept}
    other_keys = {_geometry_key(s) for s in gone} - kept_keys
    geometry = "" if not other_keys else \
        f" (mixed geometry too: {'; '.join(_describe_key(k) for k in sorted(other_keys, key=str)[:3])})"
    meta["mixed_series"] = sorted(str(u) for u in dropped)
    meta["warnings"].append(
        f"mixed series: kept {groups[best]} slice(s) of SeriesInstanceUID {best}; dropped "
        + ", ".join(f"{n} slice(s) of {uid}" for uid, n in sorted(dropped.items(), key=lambda kv: str(kv[0])))
        + f"{geometry}: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
    return kept


def _triage_bad(folder: Path, slices: list[Slice], proj: np.ndarray, bad: dict[int, str], opts: LoadOptions,
                ) -> tuple[np.ndarray, list[int]]:
    """What to do with the sorted slices ``bad`` ({index: reason}): runs touching either end are dropped (the stack
    just gets shorter), runs inside it are filled from their neighbours (``fill``: indices among the kept slices).
    A PixelDecodeError naming the files when too few good slices remain, when filling is off, or when an inner run
    is longer than ``max_filled_run``."""
    n = len(slices)
    why = "; ".join(f"{slices[k].path}: {r}" for k, r in sorted(bad.items())[:10])
    good = n - len(bad)
    if good < max(opts.min_slices, 2):
        raise PixelDecodeError(f"{folder}: {why}; {good} good slice(s) left, need {max(opts.min_slices, 2)}")
    lo = 0
    while lo in bad:
        lo += 1
    hi = n - 1
    while hi in bad:
        hi -= 1
    inner = sorted(k for k in bad if lo < k < hi)
    runs, run = [], []
    for k in inner:
        if run and k != run[-1] + 1:
            runs.append(run)
            run = []
        run.append(k)
    if run:
        runs.append(run)
    if runs and not opts.fill_bad_slices:
        raise PixelDecodeError(f"{folder}: {why}; a bad slice inside the stack would leave a hole "
                               f"(LoadOptions.fill_bad_slices is off)")
    longest = max((len(r) for r in runs), default=0)
    if longest > opts.max_filled_run:
        raise PixelDecodeError(f"{folder}: {why}; {longest} consecutive bad slices inside the stack, more than "
                               f"LoadOptions.max_filled_run={opts.max_filled_run} can be filled")
    keep = np.zeros(n, dtype=bool)
    keep[lo:hi + 1] = True
    return keep, [k - lo for k in inner]


def _fill_from_neighbours(array: np.ndarray, proj: np.ndarray, fill: list[int]) -> None:
    """Slices ``fill`` (never the first or last) become the linear interpolation, by position along the normal,
    of the nearest good slices below and above them."""
    holes = set(fill)
    for k in fill:
        lo = max(i for i in range(k) if i not in holes)
        hi = min(i for i in range(k + 1, len(array)) if i not in holes)
        w = (proj[k] - proj[lo]) / (proj[hi] - proj[lo])
        vals = (1.0 - w) * array[lo].astype(np.float32) + w * array[hi].astype(np.float32)
        array[k] = np.rint(vals) if array.dtype.kind == "i" else vals


def _drop_nonfinite_positions(folder: Path, slices: list[Slice], opts: LoadOptions,
                              meta: dict[str, Any]) -> list[Slice]:
    """Slices whose ImagePositionPatient is NaN/inf are dropped as odd slices (or an error when too few remain)."""
    bad = [s for s in slices if s.ipp is not None and not np.all(np.isfinite(s.ipp))]
    if not bad:
        return slices
    kept = [s for s in slices if not any(s is b for b in bad)]
    why = "; ".join(f"{s.path}: non-finite ImagePositionPatient {list(s.ipp)}" for s in bad[:10])
    if len(kept) < max(opts.min_slices, 1):
        raise GeometryError(f"{folder}: {why}; {len(kept)} slice(s) left, need {opts.min_slices}")
    meta["dropped_slices"].extend(_slice_name(s) for s in bad)
    meta["warnings"].append(f"dropped {len(bad)} slice(s): {why}")
    return kept


def _drop_far_slices(folder: Path, slices: list[Slice], proj: np.ndarray, opts: LoadOptions,
                     meta: dict[str, Any]) -> tuple[list[Slice], np.ndarray]:
    """A slice at either end further than ``outlier_gap_factor`` median gaps from its neighbour is dropped as an
    odd slice (repeatedly), or an error when that leaves too few slices."""
    while len(proj) >= 3:
        gaps = np.diff(proj)
        med = float(np.median(gaps))
        limit = opts.outlier_gap_factor * med
        if gaps[0] > limit and gaps[0] >= gaps[-1]:
            k = 0
        elif gaps[-1] > limit:
            k = len(slices) - 1
        else:
            break
        gap = gaps[0] if k == 0 else gaps[-1]
        why = f"{slices[k].path}: {gap:.4g} mm from its neighbour, over {opts.outlier_gap_factor:g}x the median " \
              f"gap {med:.4g} mm"
        if len(slices) - 1 < max(opts.min_slices, 1):
            raise GeometryError(f"{folder}: {why}; too few slices would remain")
        meta["dropped_slices"].append(_slice_name(slices[k]))
        meta["warnings"].append(f"dropped a slice far from the others: {why}")
        slices = slices[:k] + slices[k + 1:]
        proj = np.delete(proj, k)
    return slices, proj


def _check_extent(folder: Path, first: Slice, ps: tuple[float, float], proj: np.ndarray,
                  opts: LoadOptions) -> None:
    """The volume's extent along the normal and in-plane must stay below ``max_extent_mm``."""
    extents = {"along the slice normal": float(np.ptp(proj)) if len(proj) else 0.0,
               "along the columns": first.rows * float(ps[0]), "along the rows": first.cols * float(ps[1])}
    for axis, ext in extents.items():
        if not np.isfinite(ext) or ext > opts.max_extent_mm:
            raise GeometryError(f"{folder}: volume extent {ext:.6g} mm {axis} (e.g. {first.path.name}) is over "
                                f"LoadOptions.max_extent_mm={opts.max_extent_mm:g}")


def _round(v) -> float | str:
    v = float(v)
    return round(v, 3) if math.isfinite(v) else str(v)  # NaN != NaN: keep non-finite values comparable


def _geometry_key(s: Slice) -> tuple:
    iop = None if s.iop is None else tuple(_round(v) for v in s.iop)
    ps = None if s.pixel_spacing is None else tuple(_round(v) for v in s.pixel_spacing)
    return (s.rows, s.cols, iop, ps)


def _describe_key(key: tuple) -> str:
    rows, cols, iop, ps = key
    return f"{rows}x{cols}, orientation {iop}, spacing {ps}"


def _keep_majority_geometry(slices: list[Slice], meta: dict[str, Any]) -> list[Slice]:
    """The slices of the most common (size, orientation, spacing) group; what is dropped is named in a warning."""
    groups = Counter(_geometry_key(s) for s in slices)
    if len(groups) == 1:
        return slices
    best, _ = max(groups.items(), key=lambda kv: (kv[1], kv[0][2] is not None, kv[0][3] is not None))
    dropped = [s for s in slices if _geometry_key(s) != best]
    kept = [s for s in slices if _geometry_key(s) == best]
    names = sorted({s.path.name + ("" if s.frame is None else f"[{s.frame}]") for s in dropped})
    other = "; ".join(_describe_key(k) for k in groups if k != best)
    meta["warnings"].append(f"mixed geometry: kept {len(kept)} slice(s) of {_describe_key(best)}; dropped "
                            f"{len(dropped)} ({other}): {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")
    return kept


def _orientation(first: Slice, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthonormal (row direction, column direction, slice normal); axial and flagged when orientation is missing."""
    if first.iop is None:
        iop = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        meta["orientation_guessed"] = True
        meta["warnings"].append("ImageOrientationPatient missing everywhere: assumed axial")
    else:
        iop = first.iop
    row_dir, col_dir = iop[:3], iop[3:]
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir - row_dir * float(row_dir @ col_dir)
    col_dir = col_dir / np.linalg.norm(col_dir)
    return row_dir, col_dir, np.cross(row_dir, col_dir)


def _pixel_spacing(first: Slice, opts: LoadOptions, meta: dict[str, Any]) -> tuple[float, float]:
    """In-plane (row, column) spacing; guessed from a head-sized field of view, and flagged, when missing."""
    if first.pixel_spacing is None:
        side = max(first.rows, first.cols)
        guess = opts.fallback_pixel_spacing if not opts.fallback_fov_mm else \
            round(float(opts.fallback_fov_mm) / side, 4)
        ps = (guess, guess)
        meta["spacing_guessed"] = True
        how = f" ({opts.fallback_fov_mm:g} mm field of view over {side} px)" if opts.fallback_fov_mm else ""
        meta["warnings"].append(f"PixelSpacing missing everywhere: assumed {guess:g} mm{how}")
    else:
        ps = first.pixel_spacing
        if not all(np.isfinite(v) for v in ps):
            raise GeometryError(f"{first.path}: non-finite PixelSpacing {ps}")
    if min(ps) <= 0:
        raise GeometryError(f"{first.path}: non-positive PixelSpacing {ps}")
    lo, hi = opts.pixel_spacing_range
    if first.pixel_spacing is not None and not (lo <= min(ps) and max(ps) <= hi):
        raise GeometryError(f"{first.path}: PixelSpacing {ps} mm outside the plausible range {lo:g}..{hi:g} mm "
                            f"(LoadOptions.pixel_spacing_range)")
    return ps


def _fill_positions(folder: Path, slices: list[Slice], normal: np.ndarray, opts: LoadOptions,
                    meta: dict[str, Any]) -> None:
    """Positions of multi-frame frames without their own (stacked from frame 0 along the normal, flagged); a lone
    slice without one sits at the origin; otherwise a missing position is an error (order cannot be trusted)."""
    stacked = [s for s in slices if s.stack is not None]
    if stacked:
        gap, start = stacked[0].stack
        if gap is None:
            gap = opts.fallback_slice_spacing
            meta["spacing_guessed"] = True
            meta["warnings"].append(f"no per-frame positions and no slice spacing: assumed {gap} mm between frames")
        # Several such files of one series: each starts at its own frame-0 position, unless they share one (or
        # have none), then they are stacked file after file (in name order), never overlaid on each other.
        files = list(dict.fromkeys(s.path for s in stacked))
        starts = {s.path: np.asarray(s.stack[1], dtype=float) for s in stacked}
        same_start = len(files) > 1 and all(np.allclose(starts[p], starts[files[0]], atol=1e-3) for p in files)
        offset, base = {}, 0
        for p in files:
            offset[p] = base
            base += 1 + max(s.frame or 0 for s in stacked if s.path == p)
        for s in stacked:
            if same_start:
                s.ipp = starts[files[0]] + normal * gap * (offset[s.path] + (s.frame or 0))
            else:
                s.ipp = starts[s.path] + normal * gap * (s.frame or 0)
        meta["positions_guessed"] = True
        how = f", {len(files)} files one after the other" if same_start else ""
        meta["warnings"].append(f"no per-frame positions: frames stacked along the normal in stored order{how}")
    missing = [s.path.name for s in slices if s.ipp is None]
    if missing:
        if len(slices) == 1:
            slices[0].ipp = np.zeros(3)
        else:
            raise MissingTagError(f"{folder}: ImagePositionPatient missing in {len(missing)} of {len(slices)} "
                                  f"slice(s) (e.g. {missing[0]}); slice order cannot be trusted")


def _sort_along_normal(folder: Path, slices: list[Slice], normal: np.ndarray, opts: LoadOptions,
                       meta: dict[str, Any]) -> tuple[list[Slice], np.ndarray]:
    """Slices sorted by position along the normal (InstanceNumber breaks ties), exact duplicates of a position
    dropped; returns them with their positions along the normal."""
    proj = np.array([float(s.ipp @ normal) for s in slices])
    order = np.lexsort((np.array([s.instance or 0 for s in slices]), proj))
    slices = [slices[i] for i in order]
    proj = proj[order]
    if len(slices) > 1 and np.ptp(proj) < 1e-3:
        raise DicomSeriesError(f"{folder}: all {len(slices)} slices share one position along the slice normal")
    keep = np.concatenate([[True], np.diff(proj) > 1e-3])
    if not keep.all():
        dup = [slices[i].path.name for i in np.flatnonzero(~keep)]
        if any(slices[i].stack is not None for i in np.flatnonzero(~keep)):
            raise DicomSeriesError(f"{folder}: frames of multi-frame files without per-frame positions land on "
                                   f"the same positions ({', '.join(sorted(set(dup))[:5])}); cannot order them")
        meta["warnings"].append(f"dropped {len(dup)} slice(s) duplicating a position: {', '.join(dup[:10])}")
        slices = [s for s, k in zip(slices, keep) if k]
        proj = proj[keep]
        if len(slices) < opts.min_slices:
            raise DicomSeriesError(f"{folder}: {len(slices)} distinct slice position(s), need {opts.min_slices}")
    return slices, proj


def _slice_spacing(proj: np.ndarray, opts: LoadOptions, meta: dict[str, Any], folder: Path | None = None) -> float:
    """The median gap between sorted slices; gaps straying from it are flagged ``irregular_spacing``."""
    if len(proj) <= 1:
        return float(opts.fallback_slice_spacing)
    gaps = np.diff(proj)
    dz = float(np.median(gaps))
    lo, hi = opts.slice_spacing_range
    if not (np.isfinite(dz) and lo <= dz <= hi):
        raise GeometryError(f"{folder}: slice spacing (median gap) {dz:.6g} mm outside the plausible range "
                            f"{lo:g}..{hi:g} mm (LoadOptions.slice_spacing_range)")
    dev = float(np.max(np.abs(gaps - dz)) / dz)
    if dev > opts.irregular_tolerance:
        meta["irregular_spacing"] = True
        meta["warnings"].append(f"irregular slice spacing: gaps {gaps.min():.3f}..{gaps.max():.3f} mm, "
                                f"median {dz:.3f}")
    return dz


def _read_pixels(folder: Path, slices: list[Slice], opts: LoadOptions, skip: set[int] = frozenset(),
                 ) -> tuple[np.ndarray, dict[int, str]]:
    """Rescaled pixels of the sorted slices in one preallocated (k, j, i) array: int16 while every rescale is
    integral and the values fit, float32 otherwise. Each slice's header is let go once read (bounds peak memory).
    The array size is checked against ``max_voxels`` before allocation. Slices whose pixels fail to decode are
    returned as {index: reason} (their rows left zero) for the caller to drop or fill; when too few would remain, the
    first decode error is raised."""
    first = slices[0]
    voxels = len(slices) * first.rows * first.cols
    if voxels > opts.max_voxels:
        raise SeriesLimitError(f"{folder}: {len(slices)} x {first.rows} x {first.cols} = {voxels} voxels (e.g. "
                               f"{first.path.name}), over the limit of {opts.max_voxels} (LoadOptions.max_voxels)")
    integral = all(float(s.slope).is_integer() and float(s.intercept).is_integer() for s in slices)
    out_dtype = np.int16 if (opts.keep_integer and integral) else np.float32
    array = np.empty((len(slices), first.rows, first.cols), dtype=out_dtype)
    failed: dict[int, str] = {}
    first_error: PixelDecodeError | None = None
    for k, s in enumerate(slices):
        if k in skip:  # known bad (truncated): filled from its neighbours by the caller
            array[k] = 0
            s.source = None
            continue
        if array.dtype == np.int16 and read_into_int16(s, array[k]):
            s.source = None
            continue
        try:
            raw = decode_pixels(s)
        except PixelDecodeError as e:
            first_error = first_error or e
            failed[k] = str(e).removeprefix(f"{s.path}: ")
            array[k] = 0
            s.source = None
            if len(slices) - len(failed) < max(opts.min_slices, 1):
                raise
            continue
        if array.dtype == np.int16:
            fits = raw.dtype.itemsize == 1 or (raw.dtype.kind == "i" and raw.dtype.itemsize == 2)
            if fits and (s.slope, s.intercept) == (1.0, 0.0):
                vals = raw
            else:  # exact integer arithmetic, then a range check
                vals = raw.astype(np.int32)
                if s.slope != 1.0:
                    vals *= int(s.slope)
                if s.intercept != 0.0:
                    vals += int(s.intercept)
                if vals.min() < -32768 or vals.max() > 32767:
                    array = array.astype(np.float32)  # does not fit 16 bits: carry on in float32
        else:
            vals = raw.astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)
        array[k] = vals
        s.source = None  # let the dataset (and its pixel bytes) go: bounds peak memory
    if failed and 2 * len(failed) > len(slices) and first_error is not None:
        raise first_error  # most slices fail: a decoder problem, not a bad slice
    return array, failed
