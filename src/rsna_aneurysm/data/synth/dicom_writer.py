"""DICOM files of a synthetic series: single-frame slices or one enhanced multi-frame file, as the scanners write them.

Explicit VR Little Endian with a proper file meta (pydicom 3), optionally RLE Lossless. ``test_tags_only`` strips
a file to the competition's test-time allow-list (constants.TEST_TAGS_WITH_DATA): a multi-frame file then keeps
top-level ImageOrientationPatient, PixelSpacing, the first frame's ImagePositionPatient and SpacingBetweenSlices,
and loses its functional group sequences (and NumberOfFrames, which is not on the list).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from ...constants import DICOM_MODALITY, TEST_TAGS_WITH_DATA
from .geometry import Grid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2.1"
ENHANCED_MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4.1"


def ds_str(x: float, decimals: int = 6) -> str:
    """A DICOM decimal string (at most 16 characters) for ``x`` rounded to ``decimals``."""
    s = f"{round(float(x), decimals):.{decimals}f}".rstrip("0").rstrip(".")
    s = "0" if s in ("-0", "") else s
    if len(s) > 16:
        raise ValueError(f"{x!r} does not fit a 16-character DICOM decimal string")
    return s


@dataclass(frozen=True)
class PixelEncoding:
    """How modality values become stored pixels: sign, bits, rescale, photometric interpretation."""

    signed: bool
    bits_stored: int
    intercept: float | None  # None: no rescale tags (MR)
    monochrome1: bool = False

    @property
    def photometric(self) -> str:
        return "MONOCHROME1" if self.monochrome1 else "MONOCHROME2"

    def encode(self, values: np.ndarray, inplace: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(stored pixels as written, the float32 modality values a correct reader recovers).

        With ``inplace`` the recovered values overwrite ``values`` (saves a full-size copy on big grids).
        """
        offset = np.float32(-(self.intercept or 0.0))
        if self.signed:
            lo, hi, dtype = -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1, np.int16
        else:
            lo, hi, dtype = 0, 2**self.bits_stored - 1, np.uint16
        stored = np.empty(values.shape, dtype=dtype)
        truth = values if inplace else np.empty(values.shape, dtype=np.float32)
        for k in range(0, values.shape[0], 16):
            q = np.rint(values[k:k + 16]) + offset
            np.clip(q, lo, hi, out=q)
            stored[k:k + 16] = q
            truth[k:k + 16] = q - offset
        if self.monochrome1:
            np.subtract(hi, stored, out=stored, casting="unsafe")  # stored inverted: a reader maps v -> max - v
        return stored, truth


def draw_encoding(modality: str, rng: np.random.Generator, monochrome1: bool = False) -> PixelEncoding:
    """CT: unsigned with intercept -1024 or signed with intercept 0; MR: unsigned, no rescale."""
    if modality == "CTA":
        if rng.random() < 0.6:
            return PixelEncoding(signed=False, bits_stored=int(rng.choice([12, 16])), intercept=-1024.0)
        return PixelEncoding(signed=True, bits_stored=16, intercept=0.0)
    return PixelEncoding(signed=False, bits_stored=int(rng.choice([12, 16])), intercept=None, monochrome1=monochrome1)


@dataclass(frozen=True)
class SeriesHeader:
    """Identity and demographics shared by every file of a series."""

    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    patient_id: str
    modality: str  # competition modality (CTA, MRA, MRI T2, MRI T1post)
    patient_age: int | None = None
    patient_sex: str | None = None  # Female | Male
    series_number: int = 1


def _base(header: SeriesHeader, enc: PixelEncoding, rows: int, cols: int, sop_class: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.FrameOfReferenceUID = header.frame_of_reference_uid
    ds.PatientID = header.patient_id
    if header.patient_age is not None:
        ds.PatientAge = f"{int(header.patient_age):03d}Y"
    if header.patient_sex is not None:
        ds.PatientSex = header.patient_sex[0].upper()
    ds.Modality = DICOM_MODALITY[header.modality]
    ds.SeriesDescription = f"SYNTH {header.modality}"
    ds.SeriesNumber = header.series_number
    ds.Rows, ds.Columns = int(rows), int(cols)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = enc.photometric
    ds.BitsAllocated = 16
    ds.BitsStored = enc.bits_stored
    ds.HighBit = enc.bits_stored - 1
    ds.PixelRepresentation = int(enc.signed)
    if enc.intercept is not None:
        ds.RescaleIntercept = ds_str(enc.intercept)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
    return ds


def strip_to_test_tags(ds: Dataset) -> Dataset:
    """Delete every top-level element not on constants.TEST_TAGS_WITH_DATA (the file meta is kept)."""
    for elem in list(ds):
        if elem.keyword not in TEST_TAGS_WITH_DATA:
            del ds[elem.tag]
    return ds


def _geometry_tags(ds: Dataset, grid: Grid) -> None:
    ds.ImageOrientationPatient = [ds_str(v, 8) for v in (*grid.row_cos, *grid.col_cos)]
    ds.PixelSpacing = [ds_str(grid.row_spacing), ds_str(grid.col_spacing)]
    ds.SliceThickness = ds_str(grid.slice_thickness)


def _compress(ds: Dataset, transfer_syntax: str, pixels: np.ndarray) -> None:
    # pydicom's own RLE encoder, whatever else is installed: the bytes must not depend on the machine.
    plugin = "pydicom" if transfer_syntax == RLELossless else ""
    ds.compress(transfer_syntax, pixels, encoding_plugin=plugin, generate_instance_uid=False)


def _write(path: Path, ds: Dataset, pixels: np.ndarray, transfer_syntax: str | None) -> None:
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if transfer_syntax is None or transfer_syntax == ExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    else:
        _compress(ds, transfer_syntax, np.ascontiguousarray(pixels))
    dcmwrite(path, ds, enforce_file_format=True)


def write_slices(out_dir: Path, header: SeriesHeader, enc: PixelEncoding, grid: Grid, stored: np.ndarray,
                 ks: list[int], sop_uids: list[str], instance_numbers: list[int], *, spacing_between: bool = False,
                 test_tags_only: bool = False, transfer_syntax: str | None = None,
                 image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")) -> list[Path]:
    """Write sorted slices ``ks`` of ``stored`` (``[k, j, i]``) as single-frame files named ``<sop>.dcm``."""
    sop_class = CT_IMAGE if DICOM_MODALITY[header.modality] == "CT" else MR_IMAGE
    ds = _base(header, enc, grid.rows, grid.cols, sop_class)
    ds.ImageType = list(image_type)
    _geometry_tags(ds, grid)
    if spacing_between:
        ds.SpacingBetweenSlices = ds_str(grid.slice_spacing)
    if test_tags_only:
        strip_to_test_tags(ds)
    paths = []
    for k, sop, number in zip(ks, sop_uids, instance_numbers, strict=True):
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = int(number)
        ds.ImagePositionPatient = [ds_str(v, 5) for v in grid.ipp(k)]
        path = out_dir / f"{sop}.dcm"
        _write(path, ds, stored[k], transfer_syntax)
        paths.append(path)
    return paths


def write_multiframe(out_dir: Path, header: SeriesHeader, enc: PixelEncoding, grid: Grid, stored: np.ndarray,
                     sop_uid: str, frame_order: list[int], *, no_geometry: bool = False, test_tags_only: bool = False,
                     transfer_syntax: str | None = None) -> Path:
    """Write one enhanced multi-frame file; stored frame ``f`` is sorted slice ``frame_order[f]``."""
    sop_class = ENHANCED_CT_IMAGE if DICOM_MODALITY[header.modality] == "CT" else ENHANCED_MR_IMAGE
    ds = _base(header, enc, grid.rows, grid.cols, sop_class)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.NumberOfFrames = len(frame_order)
    shared = Dataset()
    measures = Dataset()
    if not no_geometry:
        measures.PixelSpacing = [ds_str(grid.row_spacing), ds_str(grid.col_spacing)]
        measures.SpacingBetweenSlices = ds_str(grid.slice_spacing)
        orientation = Dataset()
        orientation.ImageOrientationPatient = [ds_str(v, 8) for v in (*grid.row_cos, *grid.col_cos)]
        shared.PlaneOrientationSequence = Sequence([orientation])
    measures.SliceThickness = ds_str(grid.slice_thickness)
    shared.PixelMeasuresSequence = Sequence([measures])
    if enc.intercept is not None:
        transform = Dataset()
        transform.RescaleIntercept = ds_str(enc.intercept)
        transform.RescaleSlope = "1"
        transform.RescaleType = "HU"
        shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k in frame_order:
        item, position, content = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [ds_str(v, 5) for v in grid.ipp(k)]
        content.StackID = "1"
        content.InStackPositionNumber = int(k) + 1
        item.PlanePositionSequence = Sequence([position])
        item.FrameContentSequence = Sequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    if test_tags_only:
        # What the test-time files hold instead of the functional groups: first frame's position, shared geometry.
        ds.ImagePositionPatient = [ds_str(v, 5) for v in grid.ipp(frame_order[0])]
        ds.SliceThickness = ds_str(grid.slice_thickness)
        if not no_geometry:
            ds.ImageOrientationPatient = [ds_str(v, 8) for v in (*grid.row_cos, *grid.col_cos)]
            ds.PixelSpacing = [ds_str(grid.row_spacing), ds_str(grid.col_spacing)]
            ds.SpacingBetweenSlices = ds_str(grid.slice_spacing)
    path = out_dir / f"{sop_uid}.dcm"
    frames = np.ascontiguousarray(stored[np.asarray(frame_order)])
    if transfer_syntax is None or transfer_syntax == ExplicitVRLittleEndian:
        ds.PixelData = frames.tobytes()
    else:
        _compress(ds, transfer_syntax, frames)
    if test_tags_only:
        strip_to_test_tags(ds)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    dcmwrite(path, ds, enforce_file_format=True)
    return path
