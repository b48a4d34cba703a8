from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from rsna_aneurysm.constants import TEST_TAGS_WITH_DATA
from rsna_aneurysm.data.synth import SeriesSpec, make_series
from rsna_aneurysm.io.dicom import DicomSeriesError, LoadOptions, MissingTagError, PixelDecodeError, load_series
from rsna_aneurysm.preprocess.annotations import (
    Localizer,
    UnknownSOPError,
    localizer_to_index,
    localizer_to_world,
    world_to_localizer,
)

GEOMETRIES = {
    "axial": SeriesSpec(plane="axial"),
    "coronal": SeriesSpec(plane="coronal", modality="MRA"),
    "sagittal": SeriesSpec(plane="sagittal", modality="MRI T2"),
    "reversed": SeriesSpec(plane="axial", reversed=True),
    "shuffled": SeriesSpec(plane="axial", shuffle_instance_numbers=True, modality="MRI T1post"),
    "multiframe": SeriesSpec(plane="axial", multiframe=True),
    "multiframe_coronal_test_tags": SeriesSpec(plane="coronal", multiframe=True, test_tags_only=True),
    "test_tags": SeriesSpec(plane="sagittal", test_tags_only=True, reversed=True),
    "odd_slice": SeriesSpec(plane="axial", odd_slice=True),
    "rle": SeriesSpec(plane="axial", transfer_syntax=RLELossless),
}
ANEURYSMS = ("Anterior Communicating Artery", "Left Middle Cerebral Artery")


def _make(tmp_path, name: str, spec: SeriesSpec, seed: int = 3) -> tuple:
    spec.seed = seed
    if spec.locations is None:
        spec.locations = ANEURYSMS
    folder = tmp_path / name
    truth = make_series(folder, spec)
    return folder, truth


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_loaded_geometry_places_aneurysms_within_half_a_voxel(tmp_path, name):
    folder, truth = _make(tmp_path, name, GEOMETRIES[name])
    vol = load_series(folder)
    ref = truth["volume"]
    assert vol.array.shape == ref.array.shape
    # Same voxel -> world mapping as the generator's ground truth, everywhere.
    corners = np.array([[0, 0, 0], np.array(vol.shape_ijk) - 1, [3, 5, 7]], dtype=float)
    assert np.allclose(vol.index_to_world(corners), ref.index_to_world(corners), atol=1e-3)
    # And the same voxels in the same places (the truth volume is in sorted-slice order).
    assert np.allclose(vol.array, ref.array, atol=1e-3 * max(1.0, float(np.abs(ref.array).max())))
    if name.startswith("multiframe"):
        assert all(f is not None for f in vol.meta["frames"])
    if name == "odd_slice":
        assert any("mixed geometry" in w for w in vol.meta["warnings"])
    assert truth["aneurysms"], "the spec asks for aneurysms"
    for an in truth["aneurysms"]:
        idx = vol.world_to_index(an["center_lps"])
        assert np.all(idx > -0.5) and np.all(idx < np.array(vol.shape_ijk) - 0.5), "centre inside the volume"
    # Through the localizer mapping: the annotated point is the centre, within half a voxel along every axis.
    centres = {a["location"]: np.asarray(a["center_lps"]) for a in truth["aneurysms"]}
    assert len(truth["localizers"]) == len(truth["aneurysms"])
    for row in truth["localizers"]:
        loc = Localizer(row["SOPInstanceUID"], row["x"], row["y"], row["f"])
        ijk = localizer_to_index(vol, loc)
        true_ijk = vol.world_to_index(centres[row["location"]])
        assert np.all(np.abs(ijk - true_ijk) <= 0.5 + 1e-6), (ijk, true_ijk)
        world = localizer_to_world(vol, loc)
        assert np.linalg.norm(world - centres[row["location"]]) <= 0.5 * np.linalg.norm(vol.spacing) + 1e-6
        back = world_to_localizer(vol, world)
        assert (back.sop, back.frame) == (loc.sop, loc.frame)
        assert np.isclose(back.x, loc.x) and np.isclose(back.y, loc.y)


def test_test_time_files_carry_only_allowed_tags_and_still_load(tmp_path):
    folder, truth = _make(tmp_path, "t", SeriesSpec(plane="axial", test_tags_only=True, shuffle_instance_numbers=True))
    for p in folder.iterdir():
        ds = pydicom.dcmread(p)
        assert {e.keyword for e in ds} <= TEST_TAGS_WITH_DATA
    vol = load_series(folder)
    assert np.allclose(vol.origin, truth["volume"].origin, atol=1e-3)


def test_multiframe_without_spacing_or_orientation_is_flagged(tmp_path):
    folder, _ = _make(tmp_path, "mf", SeriesSpec(multiframe=True, multiframe_no_geometry=True))
    vol = load_series(folder)
    assert vol.meta["spacing_guessed"] and vol.meta["orientation_guessed"]
    assert any("PixelSpacing missing" in w for w in vol.meta["warnings"])
    # The guess is a head-sized field of view over the matrix, not a fixed CT-like 0.5 mm.
    n = max(vol.array.shape[1:])
    assert np.allclose(vol.spacing[:2], 230.0 / n, atol=1e-3)
    fixed = load_series(folder, LoadOptions(fallback_fov_mm=None, fallback_pixel_spacing=0.7))
    assert np.allclose(fixed.spacing[:2], 0.7)


def test_unknown_sop_is_reported_not_guessed(tmp_path):
    folder, truth = _make(tmp_path, "a", SeriesSpec())
    vol = load_series(folder)
    with pytest.raises(UnknownSOPError, match="1.2.3.4.5"):
        localizer_to_index(vol, Localizer("1.2.3.4.5", 10.0, 10.0))


# --- failures -------------------------------------------------------------------------------------------------


def _files(folder):
    return sorted(folder.iterdir())


def test_empty_folder_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomSeriesError, match="empty"):
        load_series(tmp_path / "empty")
    with pytest.raises(DicomSeriesError, match="does not exist"):
        load_series(tmp_path / "nope")


def test_non_dicom_file_is_skipped_with_a_warning_and_alone_is_an_error(tmp_path):
    folder, truth = _make(tmp_path, "a", SeriesSpec())
    (folder / "notes.txt").write_text("hello, not an image")
    vol = load_series(folder)
    assert vol.array.shape == truth["volume"].array.shape
    assert any("notes.txt" in w for w in vol.meta["warnings"])
    only = tmp_path / "only"
    only.mkdir()
    (only / "x.dcm").write_bytes(b"\x00" * 300)
    with pytest.raises(DicomSeriesError, match="no DICOM files"):
        load_series(only)


def test_unreadable_file_names_the_file(tmp_path):
    folder, _ = _make(tmp_path, "a", SeriesSpec())
    victim = _files(folder)[2]
    data = victim.read_bytes()
    victim.write_bytes(data[:132] + b"\x08\x00\x18\x00UI\xff\xff" + b"\x01" * 20)  # DICM preamble, broken element
    with pytest.raises(DicomSeriesError, match=victim.name):
        load_series(folder)


def test_truncated_pixel_data_names_the_file(tmp_path):
    folder, _ = _make(tmp_path, "a", SeriesSpec())
    victim = _files(folder)[1]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(victim)
    with pytest.raises(PixelDecodeError, match=victim.name):
        load_series(folder, LoadOptions(fill_bad_slices=False))
    vol = load_series(folder)  # by default an odd slice: dropped at an end, filled inside the stack, and named
    assert victim.name in vol.meta["dropped_slices"] + vol.meta["filled_slices"]


@pytest.mark.parametrize("tag", ["ImagePositionPatient", "Rows"])
def test_missing_tags(tmp_path, tag):
    folder, _ = _make(tmp_path, "a", SeriesSpec())
    victim = _files(folder)[0]
    ds = pydicom.dcmread(victim)
    delattr(ds, tag)
    ds.save_as(victim)
    with pytest.raises(MissingTagError, match=tag):
        load_series(folder)


def test_mixed_geometry_keeps_the_majority_and_names_the_rest(tmp_path):
    folder, truth = _make(tmp_path, "a", SeriesSpec())
    other, _ = _make(tmp_path, "b", SeriesSpec(plane="coronal"), seed=9)
    stray = _files(other)[0]
    shutil.copy(stray, folder / stray.name)
    vol = load_series(folder)
    assert vol.array.shape == truth["volume"].array.shape
    assert any("mixed geometry" in w and stray.name in w for w in vol.meta["warnings"])


def test_all_slices_at_one_position_is_an_error(tmp_path):
    folder, _ = _make(tmp_path, "a", SeriesSpec())
    ipp = pydicom.dcmread(_files(folder)[0]).ImagePositionPatient
    for p in _files(folder):
        ds = pydicom.dcmread(p)
        ds.ImagePositionPatient = ipp
        ds.save_as(p)
    with pytest.raises(DicomSeriesError, match="one position"):
        load_series(folder)


def test_single_slice_is_an_error(tmp_path):
    folder, _ = _make(tmp_path, "a", SeriesSpec())
    for p in _files(folder)[1:]:
        p.unlink()
    with pytest.raises(DicomSeriesError, match="usable slice"):
        load_series(folder)


@pytest.mark.parametrize("name", ["axial", "reversed", "test_tags", "multiframe", "rle", "odd_slice"])
def test_fast_header_path_equals_pydicom_path(tmp_path, name):
    from rsna_aneurysm.io.dicom import LoadOptions

    folder, _ = _make(tmp_path, name, GEOMETRIES[name])
    fast = load_series(folder, LoadOptions(fast_headers=True))
    slow = load_series(folder, LoadOptions(fast_headers=False))
    assert np.array_equal(fast.array, slow.array) and fast.array.dtype == slow.array.dtype
    assert fast.spacing == slow.spacing and fast.origin == slow.origin
    assert fast.meta["sop_uids"] == slow.meta["sop_uids"] and fast.meta["warnings"] == slow.meta["warnings"]


def test_implicit_vr_files_take_the_fast_path(tmp_path):
    from pydicom.uid import ImplicitVRLittleEndian

    from rsna_aneurysm.io.dicom_fast import parse_header

    folder, truth = _make(tmp_path, "a", SeriesSpec(modality="MRA"))
    for p in _files(folder):
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(p, implicit_vr=True, little_endian=True, enforce_file_format=True)
    assert all(parse_header(p) is not None for p in _files(folder))
    vol = load_series(folder)
    assert np.allclose(vol.array, truth["volume"].array, atol=1e-3 * float(np.abs(truth["volume"].array).max()))
