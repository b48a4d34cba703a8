"""The series loader against hostile input: size limits, mixed series, bad slices, absurd geometry, unknown
transfer syntaxes. Every series is a tiny synthetic one the test builds and then damages with pydicom."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

import rsna_aneurysm.io.dicom as dicom_mod
from rsna_aneurysm.data.synth import SeriesSpec, make_series
from rsna_aneurysm.io.dicom import (
    DicomSeriesError,
    GeometryError,
    LoadOptions,
    PixelDecodeError,
    SeriesLimitError,
    UnsupportedTransferSyntaxError,
    load_series,
)


def _make(tmp_path, name="a", seed=3, **kw):
    kw.setdefault("tilt", False)
    kw.setdefault("locations", ())
    folder = tmp_path / name
    make_series(folder, SeriesSpec(seed=seed, **kw))
    return folder


def _files(folder):
    return sorted(folder.iterdir())


def _sorted_files(folder):
    """The folder's files in slice order (along +z for the untilted axial series used here)."""
    return sorted(_files(folder), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                                       .ImagePositionPatient[2]))


def _edit(path, **tags):
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path)


def _no_decoding(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(dicom_mod, "decode_pixels", boom)
    monkeypatch.setattr(dicom_mod, "read_into_int16", boom)


# 1. limits --------------------------------------------------------------------------------------------------------

def test_limits_are_refused_before_any_pixel_is_read(tmp_path, monkeypatch):
    folder = _make(tmp_path)
    _no_decoding(monkeypatch)
    for opts, setting in ((LoadOptions(max_slices=5), "max_slices"), (LoadOptions(max_bytes=10_000), "max_bytes"),
                          (LoadOptions(max_voxels=1000), "max_voxels")):
        with pytest.raises(SeriesLimitError, match=setting) as e:
            load_series(folder, opts)
        assert str(folder) in str(e.value)


def test_huge_number_of_frames_is_refused_from_the_header(tmp_path, monkeypatch):
    folder = tmp_path / "mf"
    folder.mkdir()
    src = _files(_make(tmp_path))[0]
    victim = folder / src.name
    shutil.copy(src, victim)
    _edit(victim, NumberOfFrames=100000)
    _no_decoding(monkeypatch)
    with pytest.raises(SeriesLimitError, match="max_frames") as e:
        load_series(folder)
    assert victim.name in str(e.value) and "100000" in str(e.value)


# 2. one SeriesInstanceUID per volume ------------------------------------------------------------------------------

def test_mixed_series_keep_the_majority_and_name_the_dropped_uid(tmp_path):
    folder = _make(tmp_path)
    n = len(_files(folder))
    other = _make(tmp_path, "b", seed=5)  # another series (same plane, other geometry) : three of its slices
    other_uid = str(pydicom.dcmread(_files(other)[0]).SeriesInstanceUID)
    for p in _files(other)[:3]:
        shutil.copy(p, folder / p.name)
    vol = load_series(folder)
    assert vol.array.shape[0] == n
    assert vol.meta["mixed_series"] == [other_uid]
    assert any("mixed series" in w and other_uid in w and "3 slice" in w for w in vol.meta["warnings"])


def test_mixed_series_prefers_the_uid_named_by_the_folder(tmp_path):
    a = _make(tmp_path)
    b = _make(tmp_path, "b", seed=5)
    b_uid = str(pydicom.dcmread(_files(b)[0]).SeriesInstanceUID)
    folder = tmp_path / b_uid
    shutil.copytree(b, folder)
    for p in _files(a):
        shutil.copy(p, folder / p.name)
    vol = load_series(folder)
    assert vol.meta["series_uid"] == b_uid and vol.array.shape[0] == len(_files(b))
    assert vol.meta["mixed_series"] == [str(pydicom.dcmread(_files(a)[0]).SeriesInstanceUID)]


def test_two_stacked_multiframe_files(tmp_path):
    folder = _make(tmp_path, multiframe=True, test_tags_only=True)
    (src,) = _files(folder)
    n = int(pydicom.dcmread(src).get("NumberOfFrames", 0)) or load_series(folder).array.shape[0]
    # Same series: the second file's frames follow the first file's, none is dropped.
    twin = folder / ("z" + src.name)
    shutil.copy(src, twin)
    _edit(twin, SOPInstanceUID=pydicom.uid.generate_uid())
    vol = load_series(folder)
    assert vol.array.shape[0] == 2 * n
    assert vol.meta["positions_guessed"] and not vol.meta["dropped_slices"]
    # Another series: the UID rule keeps one file whole, and says so.
    uid = pydicom.uid.generate_uid()
    _edit(twin, SeriesInstanceUID=uid)
    vol = load_series(folder)
    assert vol.array.shape[0] == n
    assert vol.meta["mixed_series"] and any("mixed series" in w for w in vol.meta["warnings"])


# 3. bad slices ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fast", [True, False])
def test_truncated_end_slice_is_dropped_and_flagged(tmp_path, fast):
    folder = _make(tmp_path)
    files = _sorted_files(folder)
    victim = files[-1]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3 * 2 // 2 * 2]
    ds.save_as(victim)
    vol = load_series(folder, LoadOptions(fast_headers=fast))
    assert vol.array.shape[0] == len(files) - 1
    assert vol.meta["dropped_slices"] == [victim.name]
    assert any(victim.name in w and "truncated" in w for w in vol.meta["warnings"])


def test_truncated_middle_slice_is_filled_from_its_neighbours(tmp_path):
    folder = _make(tmp_path)
    files = _sorted_files(folder)
    intact = load_series(folder)
    victim = files[10]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(victim)
    vol = load_series(folder)
    assert vol.array.shape == intact.array.shape and vol.spacing == intact.spacing  # geometry unchanged
    assert vol.meta["filled_slices"] == [victim.name] and not vol.meta["dropped_slices"]
    assert any(victim.name in w and "filled 1" in w for w in vol.meta["warnings"])
    k = intact.meta["sop_uids"].index(vol.meta["sop_uids"][10])
    expect = (intact.array[k - 1].astype(np.float32) + intact.array[k + 1]) / 2  # equal gaps: the mean
    assert np.abs(vol.array[k].astype(np.float32) - expect).max() <= 0.5
    others = [i for i in range(len(files)) if i != k]
    np.testing.assert_array_equal(vol.array[others], intact.array[others])
    with pytest.raises(PixelDecodeError, match=victim.name):
        load_series(folder, LoadOptions(fill_bad_slices=False))


def test_a_long_run_of_bad_middle_slices_is_an_error_naming_the_files(tmp_path):
    folder = _make(tmp_path)
    victims = _sorted_files(folder)[8:11]
    for victim in victims:
        ds = pydicom.dcmread(victim)
        ds.PixelData = ds.PixelData[:100]
        ds.save_as(victim)
    with pytest.raises(PixelDecodeError, match="max_filled_run") as e:
        load_series(folder)
    assert all(v.name in str(e.value) for v in victims)


def test_multiframe_with_missing_frames_keeps_the_complete_ones(tmp_path):
    folder = _make(tmp_path, multiframe=True)
    (victim,) = _files(folder)
    ds = pydicom.dcmread(victim)
    n = int(ds.NumberOfFrames)
    frame = ds.Rows * ds.Columns * ds.BitsAllocated // 8
    ds.PixelData = ds.PixelData[: frame * (n - 3) + frame // 2]
    ds.save_as(victim)
    vol = load_series(folder)
    assert vol.array.shape[0] == n - 3
    assert vol.meta["truncated"] is True
    assert vol.meta["truncated_frames"] == {victim.name: {"declared": n, "kept": n - 3}}
    assert any(victim.name in w and "NumberOfFrames" in w for w in vol.meta["warnings"])


def test_undecodable_compressed_end_slice_is_dropped(tmp_path):
    folder = _make(tmp_path, transfer_syntax=RLELossless)
    files = _sorted_files(folder)
    victim = files[0]
    ds = pydicom.dcmread(victim)
    data = bytearray(ds.PixelData)
    data[-64:] = b"\x00" * 64
    ds.PixelData = bytes(data[: len(data) // 2 // 2 * 2])  # broken RLE segments
    ds.save_as(victim)
    vol = load_series(folder)
    assert vol.array.shape[0] == len(files) - 1
    assert vol.meta["dropped_slices"] == [victim.name]


# 4. absurd geometry -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing", [[float("nan"), 0.5], [float("inf"), 0.5], [0.0, 0.5], [-1.0, -1.0], [50, 50],
                                     [0.001, 0.001]])
def test_absurd_pixel_spacing_is_an_error_naming_the_file(tmp_path, spacing):
    folder = _make(tmp_path)
    for p in _files(folder):
        _edit(p, PixelSpacing=spacing)
    with pytest.raises(GeometryError, match=r"\.dcm: .*PixelSpacing"):
        load_series(folder)


def _set_z(path, z):
    ds = pydicom.dcmread(path)
    ipp = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [ipp[0], ipp[1], z]
    ds.save_as(path)


def test_absurd_slice_spacing_is_an_error(tmp_path):
    folder = _make(tmp_path)
    for k, p in enumerate(_sorted_files(folder)):
        _set_z(p, 30.0 * k)
    with pytest.raises(GeometryError, match="slice_spacing_range") as e:
        load_series(folder)
    assert str(folder) in str(e.value)


@pytest.mark.parametrize("z", [1e6, float("inf"), float("nan")])
def test_a_slice_far_away_is_dropped_and_flagged(tmp_path, z):
    folder = _make(tmp_path)
    files = _sorted_files(folder)
    victim = files[-1]
    _set_z(victim, z)
    vol = load_series(folder)
    assert vol.array.shape[0] == len(files) - 1
    assert vol.meta["dropped_slices"] == [victim.name]
    assert any(victim.name in w for w in vol.meta["warnings"])
    assert np.isfinite(vol.spacing).all() and vol.spacing[2] < 20


def test_far_slices_leaving_too_few_is_an_error(tmp_path):
    folder = _make(tmp_path)
    files = _sorted_files(folder)
    for p in files[4:]:
        p.unlink()
    _set_z(files[3], 1e6)
    with pytest.raises(GeometryError, match=files[3].name):
        load_series(folder, LoadOptions(min_slices=4))


def test_extent_over_the_limit_is_an_error(tmp_path):
    folder = _make(tmp_path)
    with pytest.raises(GeometryError, match="max_extent_mm"):
        load_series(folder, LoadOptions(max_extent_mm=50.0))


# 5. unknown transfer syntax ---------------------------------------------------------------------------------------

def test_unknown_transfer_syntax_names_the_file_and_uid(tmp_path):
    folder = _make(tmp_path)
    old, new = b"1.2.840.10008.1.2.1\x00", b"1.2.840.99999.1.2.3\x00"
    for p in _files(folder):
        data = p.read_bytes()
        assert old in data[:400]
        p.write_bytes(data.replace(old, new, 1))
    with pytest.raises(UnsupportedTransferSyntaxError, match="1.2.840.99999.1.2.3") as e:
        load_series(folder)
    assert ".dcm" in str(e.value) and isinstance(e.value, DicomSeriesError)
