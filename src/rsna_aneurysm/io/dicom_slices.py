"""One DICOM file into its :class:`Slice` records (several for a multi-frame file), and one slice's stored pixels.

The per-file half of the loader (``io.dicom`` does the series: grouping, sorting, stacking). Headers come from the
struct-based walker (``io.dicom_fast``) for plain single-frame files, from pydicom otherwise; enhanced multi-frame
files describe frames in functional group sequences, or (test-time files) only at top level. Uncompressed pixel
data is read straight from the PixelData bytes (``np.frombuffer``, or ``readinto`` the output array), about twice
as fast as pydicom's ``pixel_array``; compressed syntaxes go through pydicom's plugins (the ``codecs`` extra).
The errors are defined here and re-exported by ``io.dicom``, their public home.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, AllTransferSyntaxes, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .dicom_fast import FastHeader, parse_header

# Values larger than this (PixelData) stay on disk until used: a file's header limits are checked first.
_DEFER_BYTES = 1 << 20
_UNCOMPRESSED_LE = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, "1.2.840.10008.1.2.1.99"}  # + deflated


class DicomSeriesError(ValueError):
    """A series folder cannot be turned into a trustworthy volume; the message names the folder or file."""


class MissingTagError(DicomSeriesError):
    """A tag the geometry or pixel decoding needs is absent."""


class PixelDecodeError(DicomSeriesError):
    """Pixel data is truncated, or compressed with a syntax no installed decoder handles."""


class UnsupportedTransferSyntaxError(PixelDecodeError):
    """The transfer syntax is unknown, or no installed decoder handles it; the message names the file and UID."""


class SeriesLimitError(DicomSeriesError):
    """The series (or one file) exceeds a size limit of ``LoadOptions``; the message names the limit and setting."""


class GeometryError(DicomSeriesError):
    """Spacing, positions or extent are non-finite or outside a plausible range for a head scan."""


@dataclass
class Slice:
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
    series_uid: str | None = None
    # Why the pixels cannot be used (e.g. truncated PixelData), found from the header; the loader drops the slice.
    bad: str | None = None


@cache
def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"unknown DICOM keyword {keyword}")
    return tag


def get_tag(ds, name: str, default=None):
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
    for groups, idx in ((get_tag(ds, "PerFrameFunctionalGroupsSequence"), frame),
                        (get_tag(ds, "SharedFunctionalGroupsSequence"), 0)):
        if groups is None or len(groups) <= idx:
            continue
        item = _first_item(get_tag(groups[idx], seq_name))
        if item is not None and get_tag(item, attr) is not None:
            return get_tag(item, attr)
    return None


def _number_of_frames(ds, path: Path, only_file: bool) -> int:
    n = get_tag(ds, "NumberOfFrames")
    if n is not None:
        return int(n)
    if "PixelData" not in ds:
        return 1
    # Test-time files drop NumberOfFrames: infer it from the pixel data.
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(get_tag(ds, "BitsAllocated", 16))
        per_frame = rows * cols * int(get_tag(ds, "SamplesPerPixel", 1)) * bits // 8
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


@cache
def _syntax_problem(tsuid: str) -> str | None:
    """Why pixels of this transfer syntax cannot be decoded here (None when they can)."""
    uid = UID(tsuid)
    if uid in _UNCOMPRESSED_LE or uid == ExplicitVRBigEndian:
        return None
    if uid not in AllTransferSyntaxes:
        return f"unknown or unsupported transfer syntax {tsuid!r} (no extra of this kit decodes it)"
    try:
        from pydicom.pixels import get_decoder

        available = get_decoder(uid).is_available
    except Exception:
        available = False
    if available:
        return None
    return (f"transfer syntax {tsuid} ({uid.name}) has no installed decoder: install the 'codecs' extra "
            f"(pip install 'rsna-aneurysm[codecs]')")


def _bytes_per_pixel(ds) -> int:
    return max(1, int(get_tag(ds, "BitsAllocated", 16)) // 8) * int(get_tag(ds, "SamplesPerPixel", 1))


def read_file(path: Path, only_file: bool = False, fast: bool = True, max_frames: int | None = None,
              meta: dict | None = None) -> list[Slice]:
    """Parse one file into its slices (several for a multi-frame file); pixels are decoded later.

    ``max_frames``: a file declaring more frames is refused (:class:`SeriesLimitError`) from its header, before any
    frame record or pixel is touched. ``meta``: the loader's meta dict, where a multi-frame file holding fewer frames
    than it declares is reported (``warnings``, ``truncated``, ``truncated_frames``)."""
    hdr = parse_header(path) if fast else None
    if hdr is not None:
        ipp, iop, ps = (_floats(hdr.get(k), n) for k, n in
                        (("ImagePositionPatient", 3), ("ImageOrientationPatient", 6), ("PixelSpacing", 2)))
        rows, cols = int(hdr.get("Rows")), int(hdr.get("Columns"))
        need = rows * cols * (hdr.get("BitsAllocated") // 8)
        bad = None if hdr.pixel_length >= need else \
            f"truncated PixelData: {hdr.pixel_length} bytes, expected {need} for {rows}x{cols} pixels"
        return [Slice(path, str(hdr.get("SOPInstanceUID", path.stem)), None, rows,
                       cols, iop, ipp, None if ps is None else tuple(ps),
                       hdr.get("InstanceNumber"), float(hdr.get("RescaleSlope", 1.0)),
                       float(hdr.get("RescaleIntercept", 0.0)), source=hdr,
                       series_uid=hdr.get("SeriesInstanceUID"), bad=bad)]
    try:
        ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)  # PixelData read on first use, after the limits
    except InvalidDicomError:
        raise
    except Exception as e:
        raise DicomSeriesError(f"{path}: unreadable DICOM file ({type(e).__name__}: {e})") from e
    for tag in ("Rows", "Columns"):
        if get_tag(ds, tag) is None:
            raise MissingTagError(f"{path}: missing {tag}")
    if "PixelData" not in ds:
        raise MissingTagError(f"{path}: missing PixelData")
    if int(ds.Rows) <= 0 or int(ds.Columns) <= 0:
        raise DicomSeriesError(f"{path}: image size {ds.Rows}x{ds.Columns}")
    tsuid = str(ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
    problem = _syntax_problem(tsuid)
    if problem is not None:
        raise UnsupportedTransferSyntaxError(f"{path}: {problem}")
    declared = get_tag(ds, "NumberOfFrames")
    try:
        declared = None if declared is None else int(declared)
    except (TypeError, ValueError):
        raise DicomSeriesError(f"{path}: NumberOfFrames {declared!r} is not a number") from None
    if declared is not None and declared < 1:
        raise DicomSeriesError(f"{path}: NumberOfFrames={declared}")
    if declared is not None and max_frames is not None and declared > max_frames:
        raise SeriesLimitError(f"{path}: NumberOfFrames={declared} exceeds the limit of {max_frames} frames per file "
                               f"(LoadOptions.max_frames)")
    sop = str(get_tag(ds, "SOPInstanceUID", path.stem))
    rows, cols = int(ds.Rows), int(ds.Columns)
    top_iop = _floats(get_tag(ds, "ImageOrientationPatient"), 6)
    top_ipp = _floats(get_tag(ds, "ImagePositionPatient"), 3)
    top_ps = _floats(get_tag(ds, "PixelSpacing"), 2)
    slope = float(get_tag(ds, "RescaleSlope", 1.0))
    intercept = float(get_tag(ds, "RescaleIntercept", 0.0))
    instance = get_tag(ds, "InstanceNumber")
    instance = int(instance) if instance is not None else None
    n_frames = _number_of_frames(ds, path, only_file)
    if max_frames is not None and n_frames > max_frames:
        raise SeriesLimitError(f"{path}: {n_frames} frames exceed the limit of {max_frames} frames per file "
                               f"(LoadOptions.max_frames)")
    series_uid = get_tag(ds, "SeriesInstanceUID")
    series_uid = None if series_uid is None else str(series_uid)
    bad = None
    if not UID(tsuid).is_compressed:  # compare the declared size with the bytes present, before any decoding
        frame_bytes = rows * cols * _bytes_per_pixel(ds)
        have = len(ds.PixelData) // frame_bytes
        if have < n_frames:
            if n_frames == 1:
                bad = (f"truncated PixelData: {len(ds.PixelData)} bytes, expected {frame_bytes} for "
                       f"{rows}x{cols} pixels")
            elif have == 0:
                raise PixelDecodeError(f"{path}: PixelData holds {len(ds.PixelData)} bytes, not one complete "
                                       f"{rows}x{cols} frame of the {n_frames} declared")
            else:
                msg = (f"{path.name}: PixelData holds {have} complete frame(s) of the {n_frames} declared "
                       f"(NumberOfFrames); kept those {have}")
                if meta is not None:
                    meta["warnings"].append(msg)
                    meta["truncated"] = True
                    meta.setdefault("truncated_frames", {})[path.name] = {"declared": n_frames, "kept": have}
                n_frames = have
    if n_frames == 1:
        ps = tuple(top_ps) if top_ps is not None else None
        return [Slice(path, sop, None, rows, cols, top_iop, top_ipp, ps, instance, slope, intercept,
                       source=ds, series_uid=series_uid, bad=bad)]
    slices = []
    for f in range(n_frames):
        iop = _floats(_functional(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        ipp = _floats(_functional(ds, f, "PlanePositionSequence", "ImagePositionPatient"), 3)
        ps = _floats(_functional(ds, f, "PixelMeasuresSequence", "PixelSpacing"), 2)
        f_slope = _functional(ds, f, "PixelValueTransformationSequence", "RescaleSlope")
        f_inter = _functional(ds, f, "PixelValueTransformationSequence", "RescaleIntercept")
        slices.append(Slice(
            path, sop, f, rows, cols,
            iop if iop is not None else top_iop,
            ipp,  # top-level IPP only describes frame 0; filled in by the loader from ``stack``
            tuple(ps) if ps is not None else (tuple(top_ps) if top_ps is not None else None),
            instance,
            float(f_slope) if f_slope is not None else slope,
            float(f_inter) if f_inter is not None else intercept,
            source=ds,
            series_uid=series_uid,
        ))
    if any(s.ipp is None for s in slices):
        # Frames without their own position (test-time files keep only the top-level IPP of frame 0): they are
        # stacked from frame 0 along the normal by the loader (io.dicom), which flags the guess.
        gap = get_tag(ds, "SpacingBetweenSlices") or _functional(ds, 0, "PixelMeasuresSequence", "SpacingBetweenSlices")
        gap = gap or get_tag(ds, "SliceThickness") or _functional(ds, 0, "PixelMeasuresSequence", "SliceThickness")
        start = top_ipp if top_ipp is not None else np.zeros(3)
        for s in slices:
            s.stack = (None if gap is None else float(gap), start)
    return slices


def decode_pixels(s: Slice) -> np.ndarray:
    """Stored pixel values of one slice as a 2D array (rows, cols), before rescale."""
    ds, frame = s.source, s.frame
    fast = isinstance(ds, FastHeader)
    tsuid = UID(ds.get("TransferSyntaxUID")) if fast else ds.file_meta.TransferSyntaxUID
    bits = int(get_tag(ds, "BitsAllocated", 16))
    samples = int(get_tag(ds, "SamplesPerPixel", 1))
    signed = int(get_tag(ds, "PixelRepresentation", 0)) == 1
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
        stored = int(get_tag(ds, "BitsStored", bits))
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
        hint = f" (transfer syntax {tsuid}, {tsuid.name})"
        try:
            if tsuid.is_compressed:
                hint = (f" (transfer syntax {tsuid}, {tsuid.name}: install the 'codecs' extra: "
                        f"pip install 'rsna-aneurysm[codecs]')")
        except ValueError:  # not a known transfer syntax
            pass
        raise PixelDecodeError(f"{s.path}: cannot decode pixel data: {e}{hint}") from e
    if arr.ndim == 3 and frame is None:  # a multi-frame file we took for single-frame
        arr = arr[0]
    if arr.shape != (s.rows, s.cols):
        raise PixelDecodeError(f"{s.path}: decoded shape {arr.shape}, expected {(s.rows, s.cols)}")
    return arr


def read_into_int16(s: Slice, out: np.ndarray) -> bool:
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
