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
- compressed transfer syntaxes need the ``codecs`` extra; the error says so.

Only tags from the test-time allow-list (``constants.TEST_TAGS``) are required. Uncompressed pixel data is read
straight from the PixelData bytes (``np.frombuffer``), which is about twice as fast as pydicom's ``pixel_array``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..volume import Volume
from .dicom_fast import FastHeader, parse_header

log = logging.getLogger(__name__)

_UNCOMPRESSED_LE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, "1.2.840.10008.1.2.1.99"}  # + deflated


class DicomSeriesError(ValueError):
    """A series folder cannot be turned into a trustworthy volume; the message names the folder or file."""


class MissingTagError(DicomSeriesError):
    """A tag the geometry or pixel decoding needs is absent."""


class PixelDecodeError(DicomSeriesError):
    """Pixel data is truncated, or compressed with a syntax no installed decoder handles."""


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


@dataclass
class _Slice:
    """One 2D image of the series (a file, or a frame of a multi-frame file) before stacking."""

    path: Path
    sop: str
    frame: int | None
    rows: int
    cols: int
    iop: np.ndarray | None  # 6 direction cosines: row direction (along i), column direction (along j)
    ipp: np.ndarray | None
    pixel_spacing: tuple[float, float] | None  # (row spacing = along j, column spacing = along i)
    instance: int | None
    slope: float
    intercept: float
    source: object = field(default=None, repr=False)  # the pydicom Dataset, for decoding later
    # Multi-frame file without per-frame positions: (gap between frames or None, position of frame 0).
    stack: tuple[float | None, np.ndarray] | None = None


@cache
def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"unknown DICOM keyword {keyword}")
    return tag


def _get(ds, name: str, default=None):
    """Tag value or default; tolerant of empty values. A dict lookup by tag: much cheaper than ``getattr``."""
    if isinstance(ds, FastHeader):
        return ds.get(name, default)
    tag = _tag(name)
    if tag not in ds:
        return default
    value = ds[tag].value
    if value is None or value == "":
        return default
    return value


def _floats(value, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.size == n else None


def _first_item(seq):
    return seq[0] if seq is not None and len(seq) > 0 else None


def _functional(ds, frame: int, seq_name: str, attr: str):
    """Look ``attr`` up in the per-frame then the shared functional group ``seq_name`` (enhanced multi-frame)."""
    for groups, idx in ((_get(ds, "PerFrameFunctionalGroupsSequence"), frame),
                        (_get(ds, "SharedFunctionalGroupsSequence"), 0)):
        if groups is None or len(groups) <= idx:
            continue
        item = _first_item(_get(groups[idx], seq_name))
        if item is not None and _get(item, attr) is not None:
            return _get(item, attr)
    return None


def _number_of_frames(ds, path: Path, only_file: bool) -> int:
    n = _get(ds, "NumberOfFrames")
    if n is not None:
        return int(n)
    if "PixelData" not in ds:
        return 1
    # Test-time files drop NumberOfFrames: infer it from the pixel data.
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(_get(ds, "BitsAllocated", 16))
        per_frame = rows * cols * int(_get(ds, "SamplesPerPixel", 1)) * bits // 8
        return max(1, len(ds.PixelData) // per_frame) if per_frame else 1
    from pydicom.encaps import parse_basic_offsets, parse_fragments

    try:
        offsets = parse_basic_offsets(ds.PixelData)
        if offsets:
            return len(offsets)
        # No offset table: a frame may span several fragments, so count fragments as frames only for a file that
        # is the whole series (the multi-frame case, where one fragment per frame is the norm).
        return max(1, parse_fragments(ds.PixelData)[0]) if only_file else 1
    except Exception:  # malformed encapsulation: decoding will report it
        return 1


def _read_file(path: Path, only_file: bool = False, fast: bool = True) -> list[_Slice]:
    """Parse one file into its slices (several for a multi-frame file); pixels are decoded later."""
    hdr = parse_header(path) if fast else None
    if hdr is not None:
        ipp, iop, ps = (_floats(hdr.get(k), n) for k, n in
                        (("ImagePositionPatient", 3), ("ImageOrientationPatient", 6), ("PixelSpacing", 2)))
        return [_Slice(path, str(hdr.get("SOPInstanceUID", path.stem)), None, int(hdr.get("Rows")),
                       int(hdr.get("Columns")), iop, ipp, None if ps is None else tuple(ps),
                       hdr.get("InstanceNumber"), float(hdr.get("RescaleSlope", 1.0)),
                       float(hdr.get("RescaleIntercept", 0.0)), source=hdr)]
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise
    except Exception as e:
        raise DicomSeriesError(f"{path}: unreadable DICOM file ({type(e).__name__}: {e})") from e
    for tag in ("Rows", "Columns"):
        if _get(ds, tag) is None:
            raise MissingTagError(f"{path}: missing {tag}")
    if "PixelData" not in ds:
        raise MissingTagError(f"{path}: missing PixelData")
    sop = str(_get(ds, "SOPInstanceUID", path.stem))
    rows, cols = int(ds.Rows), int(ds.Columns)
    top_iop = _floats(_get(ds, "ImageOrientationPatient"), 6)
    top_ipp = _floats(_get(ds, "ImagePositionPatient"), 3)
    top_ps = _floats(_get(ds, "PixelSpacing"), 2)
    slope = float(_get(ds, "RescaleSlope", 1.0))
    intercept = float(_get(ds, "RescaleIntercept", 0.0))
    instance = _get(ds, "InstanceNumber")
    instance = int(instance) if instance is not None else None
    n_frames = _number_of_frames(ds, path, only_file)
    if n_frames == 1:
        ps = tuple(top_ps) if top_ps is not None else None
        return [_Slice(path, sop, None, rows, cols, top_iop, top_ipp, ps, instance, slope, intercept,
                       source=ds)]
    slices = []
    for f in range(n_frames):
        iop = _floats(_functional(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        ipp = _floats(_functional(ds, f, "PlanePositionSequence", "ImagePositionPatient"), 3)
        ps = _floats(_functional(ds, f, "PixelMeasuresSequence", "PixelSpacing"), 2)
        f_slope = _functional(ds, f, "PixelValueTransformationSequence", "RescaleSlope")
        f_inter = _functional(ds, f, "PixelValueTransformationSequence", "RescaleIntercept")
        slices.append(_Slice(
            path, sop, f, rows, cols,
            iop if iop is not None else top_iop,
            ipp,  # top-level IPP only describes frame 0; filled in by _fill_multiframe_positions
            tuple(ps) if ps is not None else (tuple(top_ps) if top_ps is not None else None),
            instance,
            float(f_slope) if f_slope is not None else slope,
            float(f_inter) if f_inter is not None else intercept,
            source=ds,
        ))
    if any(s.ipp is None for s in slices):
        # Frames without their own position (test-time files keep only the top-level IPP of frame 0): they are
        # stacked from frame 0 along the normal by load_series, which flags the guess.
        gap = _get(ds, "SpacingBetweenSlices") or _functional(ds, 0, "PixelMeasuresSequence", "SpacingBetweenSlices")
        gap = gap or _get(ds, "SliceThickness") or _functional(ds, 0, "PixelMeasuresSequence", "SliceThickness")
        start = top_ipp if top_ipp is not None else np.zeros(3)
        for s in slices:
            s.stack = (None if gap is None else float(gap), start)
    return slices


def _decode(s: _Slice) -> np.ndarray:
    """Stored pixel values of one slice as a 2D array (rows, cols), before rescale."""
    ds, frame = s.source, s.frame
    fast = isinstance(ds, FastHeader)
    tsuid = UID(ds.get("TransferSyntaxUID")) if fast else ds.file_meta.TransferSyntaxUID
    bits = int(_get(ds, "BitsAllocated", 16))
    samples = int(_get(ds, "SamplesPerPixel", 1))
    signed = int(_get(ds, "PixelRepresentation", 0)) == 1
    if samples != 1:
        raise PixelDecodeError(f"{s.path}: SamplesPerPixel={samples}, expected a grayscale image")
    if (tsuid in _UNCOMPRESSED_LE or tsuid == ExplicitVRBigEndian) and bits in (8, 16, 32):
        dtype = np.dtype(f"{'i' if signed else 'u'}{bits // 8}")
        dtype = dtype.newbyteorder(">" if tsuid == ExplicitVRBigEndian else "<")
        n = s.rows * s.cols
        offset = (frame or 0) * n * dtype.itemsize
        if fast:  # read the pixels straight from the file
            with open(s.path, "rb") as f:
                f.seek(ds.pixel_offset)
                data = f.read(min(ds.pixel_length, n * dtype.itemsize))
        else:
            data = ds.PixelData
        if len(data) < offset + n * dtype.itemsize:
            raise PixelDecodeError(
                f"{s.path}: PixelData holds {len(data)} bytes, expected at least {offset + n * dtype.itemsize}"
                f" for {s.rows}x{s.cols} pixels{'' if frame is None else f' (frame {frame})'}"
            )
        arr = np.frombuffer(data, dtype=dtype, count=n, offset=offset).reshape(s.rows, s.cols)
        stored = int(_get(ds, "BitsStored", bits))
        if signed and stored < bits:  # sign-extend values stored in fewer bits
            shift = bits - stored
            arr = (arr.astype(dtype.newbyteorder("=")) << shift) >> shift
        return arr
    try:
        if frame is None:
            arr = ds.pixel_array
        else:
            from pydicom.pixels import pixel_array as _pa

            arr = _pa(ds, index=frame)
    except Exception as e:
        hint = ""
        if tsuid.is_compressed:
            hint = f" (transfer syntax {tsuid.name}: install the 'codecs' extra: pip install 'rsna-aneurysm[codecs]')"
        raise PixelDecodeError(f"{s.path}: cannot decode pixel data: {e}{hint}") from e
    if arr.ndim == 3 and frame is None:  # a multi-frame file we took for single-frame
        arr = arr[0]
    if arr.shape != (s.rows, s.cols):
        raise PixelDecodeError(f"{s.path}: decoded shape {arr.shape}, expected {(s.rows, s.cols)}")
    return arr


def _read_into(s: _Slice, out: np.ndarray) -> bool:
    """Fast path: read 16-bit little-endian pixels of a plain file straight into the int16 ``out`` slice and rescale
    in place. Returns False (``out`` untouched or to be overwritten) when the file or its values need the general
    path: other bit depths, a non-unit slope, sign extension, or values that would not fit 16 bits."""
    h = s.source
    if not isinstance(h, FastHeader) or h.get("BitsAllocated") != 16 or s.slope != 1.0 or sys.byteorder != "little":
        return False
    signed = h.get("PixelRepresentation", 0) == 1
    if signed and h.get("BitsStored", 16) != 16:
        return False
    n = s.rows * s.cols * 2
    if h.pixel_length < n:
        return False  # the general path reports the truncation
    with open(s.path, "rb") as f:
        f.seek(h.pixel_offset)
        if f.readinto(memoryview(out).cast("B")) != n:
            return False
    icpt = int(s.intercept)
    if signed:
        if icpt:
            lo, hi = int(out.min()), int(out.max())
            if lo + icpt < -32768 or hi + icpt > 32767:
                return False
            out += np.int16(icpt)
        return True
    u = out.view(np.uint16)
    lo, hi = int(u.min()), int(u.max())
    if hi > 32767 or lo + icpt < -32768 or hi + icpt > 32767:
        return False
    if icpt:
        out += np.int16(icpt)  # values below 32768: the int16 view holds the same numbers
    return True


def _list_files(folder: Path) -> list[Path]:
    if not folder.exists():
        raise DicomSeriesError(f"{folder}: series folder does not exist")
    if not folder.is_dir():
        raise DicomSeriesError(f"{folder}: not a folder")
    files = sorted(p for p in (folder / n for n in os.listdir(folder)) if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DicomSeriesError(f"{folder}: empty series folder (no files)")
    return files


def _geometry_key(s: _Slice) -> tuple:
    iop = None if s.iop is None else tuple(round(float(v), 3) for v in s.iop)
    ps = None if s.pixel_spacing is None else tuple(round(float(v), 3) for v in s.pixel_spacing)
    return (s.rows, s.cols, iop, ps)


def _describe_key(key: tuple) -> str:
    rows, cols, iop, ps = key
    return f"{rows}x{cols}, orientation {iop}, spacing {ps}"


def load_series(folder: str | Path, options: LoadOptions | None = None, modality: str | None = None) -> Volume:
    """Load the DICOM series in ``folder`` into a Volume in LPS geometry.

    ``meta`` carries ``sop_uids`` and ``frames`` (per slice ``k``), ``series_uid``, ``patient_id``,
    ``dicom_modality``, ``spacing_guessed``, ``orientation_guessed``, ``positions_guessed``, ``irregular_spacing``,
    ``inverted`` (MONOCHROME1) and ``warnings``. Raises :class:`DicomSeriesError` (or a subclass) naming the folder
    or file when the series cannot be read into a trustworthy volume.
    """
    opts = options or LoadOptions()
    folder = Path(folder)
    warnings: list[str] = []
    slices: list[_Slice] = []
    files = _list_files(folder)
    for path in files:
        try:
            slices.extend(_read_file(path, only_file=len(files) == 1, fast=opts.fast_headers))
        except InvalidDicomError:
            warnings.append(f"skipped {path.name}: not a DICOM file")
    if not slices:
        raise DicomSeriesError(f"{folder}: no DICOM files among {len(files)} file(s)")

    # Keep the majority geometry group; name what is dropped.
    groups = Counter(_geometry_key(s) for s in slices)
    if len(groups) > 1:
        best, _ = max(groups.items(), key=lambda kv: (kv[1], kv[0][2] is not None, kv[0][3] is not None))
        dropped = [s for s in slices if _geometry_key(s) != best]
        slices = [s for s in slices if _geometry_key(s) == best]
        names = sorted({s.path.name + ("" if s.frame is None else f"[{s.frame}]") for s in dropped})
        other = "; ".join(_describe_key(k) for k in groups if k != best)
        warnings.append(f"mixed geometry: kept {len(slices)} slice(s) of {_describe_key(best)}; dropped "
                        f"{len(dropped)} ({other}): {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}")

    first = slices[0]
    meta: dict = {"warnings": warnings, "spacing_guessed": False, "orientation_guessed": False,
                  "positions_guessed": False, "irregular_spacing": False, "inverted": False}

    # Orientation and in-plane spacing.
    if first.iop is None:
        iop = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        meta["orientation_guessed"] = True
        warnings.append("ImageOrientationPatient missing everywhere: assumed axial")
    else:
        iop = first.iop
    row_dir, col_dir = iop[:3], iop[3:]
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir - row_dir * float(row_dir @ col_dir)
    col_dir = col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    if first.pixel_spacing is None:
        guess = opts.fallback_pixel_spacing if not opts.fallback_fov_mm else \
            round(float(opts.fallback_fov_mm) / max(first.rows, first.cols), 4)
        ps = (guess, guess)
        meta["spacing_guessed"] = True
        how = f" ({opts.fallback_fov_mm:g} mm field of view over {max(first.rows, first.cols)} px)" \
            if opts.fallback_fov_mm else ""
        warnings.append(f"PixelSpacing missing everywhere: assumed {guess:g} mm{how}")
    else:
        ps = first.pixel_spacing
    if min(ps) <= 0:
        raise DicomSeriesError(f"{first.path}: non-positive PixelSpacing {ps}")

    # Positions: per slice, or (multi-frame without per-frame positions) stacked from frame 0.
    stacked = [s for s in slices if s.stack is not None]
    if stacked:
        gap, start = stacked[0].stack
        if gap is None:
            gap = opts.fallback_slice_spacing
            meta["spacing_guessed"] = True
            warnings.append(f"no per-frame positions and no slice spacing: assumed {gap} mm between frames")
        for s in slices:
            s.ipp = np.asarray(start) + normal * gap * (s.frame or 0)
        meta["positions_guessed"] = True
        warnings.append("no per-frame positions: frames stacked along the normal in stored order")
    missing = [s.path.name for s in slices if s.ipp is None]
    if missing:
        if len(slices) == 1:
            slices[0].ipp = np.zeros(3)
        else:
            raise MissingTagError(f"{folder}: ImagePositionPatient missing in {len(missing)} of {len(slices)} "
                                  f"slice(s) (e.g. {missing[0]}); slice order cannot be trusted")

    if len(slices) < opts.min_slices:
        raise DicomSeriesError(f"{folder}: {len(slices)} usable slice(s), need at least {opts.min_slices}")

    # Sort along the normal; drop exact duplicates of a position.
    proj = np.array([float(s.ipp @ normal) for s in slices])
    order = np.lexsort((np.array([s.instance or 0 for s in slices]), proj))
    slices = [slices[i] for i in order]
    proj = proj[order]
    if len(slices) > 1 and np.ptp(proj) < 1e-3:
        raise DicomSeriesError(f"{folder}: all {len(slices)} slices share one position along the slice normal")
    keep = np.concatenate([[True], np.diff(proj) > 1e-3])
    if not keep.all():
        dup = [slices[i].path.name for i in np.flatnonzero(~keep)]
        warnings.append(f"dropped {len(dup)} slice(s) duplicating a position: {', '.join(dup[:10])}")
        slices = [s for s, k in zip(slices, keep) if k]
        proj = proj[keep]
        if len(slices) < opts.min_slices:
            raise DicomSeriesError(f"{folder}: {len(slices)} distinct slice position(s), need {opts.min_slices}")

    if len(slices) > 1:
        gaps = np.diff(proj)
        dz = float(np.median(gaps))
        dev = float(np.max(np.abs(gaps - dz)) / dz)
        if dev > opts.irregular_tolerance:
            meta["irregular_spacing"] = True
            warnings.append(f"irregular slice spacing: gaps {gaps.min():.3f}..{gaps.max():.3f} mm, median {dz:.3f}")
    else:
        dz = float(opts.fallback_slice_spacing)

    # Pixels: decode into one preallocated array in sorted order.
    first_ds = slices[0].source
    integral = all(float(s.slope).is_integer() and float(s.intercept).is_integer() for s in slices)
    out_dtype = np.int16 if (opts.keep_integer and integral) else np.float32
    array = np.empty((len(slices), first.rows, first.cols), dtype=out_dtype)
    for k, s in enumerate(slices):
        if array.dtype == np.int16 and _read_into(s, array[k]):
            s.source = None
            continue
        raw = _decode(s)
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

    ds0 = first_ds
    if str(_get(ds0, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        lo, hi = array.min(), array.max()
        array = (hi + lo - array).astype(array.dtype, copy=False)
        meta["inverted"] = True

    meta.update(
        sop_uids=[s.sop for s in slices],
        frames=[s.frame for s in slices],
        series_uid=str(_get(ds0, "SeriesInstanceUID", folder.name)),
        patient_id=_get(ds0, "PatientID"),
        dicom_modality=_get(ds0, "Modality"),
        source=str(folder),
    )
    for w in warnings:
        log.warning("%s: %s", folder, w)
    direction = np.stack([row_dir, col_dir, normal], axis=1)
    # PixelSpacing is (between rows, between columns): i (columns) steps by ps[1], j (rows) by ps[0].
    return Volume(array=array, spacing=(float(ps[1]), float(ps[0]), dz), origin=tuple(slices[0].ipp),
                  direction=direction, modality=modality, meta=meta)
