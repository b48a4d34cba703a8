"""The voxel limit of resampling: a header claiming huge pixels fails fast (GridTooLargeError, nothing allocated),
normal series are unchanged, the setting is validated, and the kernel's predictor answers a counted fallback row."""

from __future__ import annotations

import resource
import time
import tracemalloc
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
import SimpleITK as sitk
import weights_helper as _helper

from rsna_aneurysm.config import ConfigError
from rsna_aneurysm.constants import ID_COL, LABEL_COLS
from rsna_aneurysm.data.synth import SeriesSpec, make_series
from rsna_aneurysm.preprocess import geometry
from rsna_aneurysm.preprocess.geometry import DEFAULT_MAX_VOXELS, GridTooLargeError, canonical_grid, resample
from rsna_aneurysm.preprocess.pipeline import PreprocessConfig, preprocess_volume
from rsna_aneurysm.volume import Volume


def _head(spacing_mm: float, shape_kji: tuple[int, int, int] = (40, 64, 64), source: str = "/series/huge") -> Volume:
    """A CT-like ball of tissue in air: spacing (i, j) claimed ``spacing_mm``, 1 mm slices."""
    k, j, i = np.indices(shape_kji, dtype=np.float32)
    c = (np.asarray(shape_kji, dtype=np.float32) - 1) / 2
    r = np.sqrt(((k - c[0]) / c[0]) ** 2 + ((j - c[1]) / c[1]) ** 2 + ((i - c[2]) / c[2]) ** 2)
    arr = np.where(r < 0.8, 40.0, -1000.0).astype(np.float32)
    return Volume(array=arr, spacing=(spacing_mm, spacing_mm, 1.0), origin=(0.0, 0.0, 0.0), modality="CTA",
                  meta={"source": source})


def _no_resample(monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("sitk.Resample was called for a grid over the limit")
    monkeypatch.setattr(geometry.sitk, "Resample", fail)


@pytest.mark.parametrize(("spacing_mm", "slices"), [(30.0, 100), (100.0, 40)])
def test_huge_claimed_spacing_fails_before_any_allocation(monkeypatch, spacing_mm: float, slices: int) -> None:
    vol = _head(spacing_mm, shape_kji=(slices, 64, 64))  # grids of ~2.4e8 and ~1.6e9 voxels at 1 mm
    _no_resample(monkeypatch)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(GridTooLargeError) as info:
        preprocess_volume(vol, PreprocessConfig())
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    msg = str(info.value)
    assert "max_voxels" in msg and "/series/huge" in msg and "voxels" in msg
    assert isinstance(info.value, ValueError)
    assert seconds < 2.0
    assert peak < 50e6  # numpy allocations are traced: no grid-sized array was made
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200_000  # KiB: < 200 MB more peak RSS


def test_limit_without_crop_and_in_resample_default(monkeypatch) -> None:
    vol = _head(100.0)
    _no_resample(monkeypatch)
    with pytest.raises(GridTooLargeError):
        preprocess_volume(vol, PreprocessConfig(crop_to_head=False))
    with pytest.raises(GridTooLargeError, match="max_voxels"):  # every other caller: the module default
        resample(vol, (1.0, 1.0, 1.0))
    with pytest.raises(GridTooLargeError):
        canonical_grid(vol, (1.0, 1.0, 1.0), max_voxels=DEFAULT_MAX_VOXELS)


def test_limit_counts_the_cropped_grid() -> None:
    vol = _head(4.0, shape_kji=(20, 32, 32))
    _, _, full = canonical_grid(vol, (1.0, 1.0, 1.0))
    out, _ = preprocess_volume(vol, PreprocessConfig(max_voxels=int(np.prod(full)) - 1))  # crop fits under it
    assert int(np.prod(out.shape_ijk)) < int(np.prod(full))
    with pytest.raises(GridTooLargeError):
        preprocess_volume(vol, PreprocessConfig(crop_to_head=False, max_voxels=int(np.prod(full)) - 1))
    with pytest.raises(GridTooLargeError):  # the reference path is checked too
        resample(vol, reference=out, max_voxels=10)


def test_normal_series_is_bit_identical_under_the_limit() -> None:
    vol = _head(0.8)
    a, ma = preprocess_volume(vol, PreprocessConfig())
    b, mb = preprocess_volume(vol, PreprocessConfig(max_voxels=10**15))
    c, _ = preprocess_volume(vol, PreprocessConfig(max_voxels=None))
    assert a.shape_ijk == b.shape_ijk and np.array_equal(a.array, b.array) and np.array_equal(a.array, c.array)
    assert np.array_equal(ma.array, mb.array) and a.origin == b.origin and a.spacing == b.spacing
    assert PreprocessConfig().digest() == PreprocessConfig(max_voxels=5).digest()  # caches stay valid
    assert sitk.Resample is not None


@pytest.mark.parametrize("bad", [0, -1, 1.5, "many", True])
def test_max_voxels_is_validated(bad) -> None:
    with pytest.raises(ConfigError, match="max_voxels"):
        PreprocessConfig(max_voxels=bad)


def _one_series(root: Path, uid: str = "1.2.826.0.1.9999.77", spacing_mm: float | None = None) -> Path:
    folder = root / "series" / uid
    make_series(folder, SeriesSpec(modality="CTA", preset="tiny", test_tags_only=True, tilt=False),
                series_uid=uid, keep_volume=False)
    if spacing_mm is not None:
        for f in sorted(folder.glob("*.dcm")):
            ds = pydicom.dcmread(f)
            ds.PixelSpacing = [spacing_mm, spacing_mm]
            ds.save_as(f)
    pl.DataFrame({ID_COL: [uid]}).write_csv(root / "test.csv")
    return folder


def test_predictor_answers_a_counted_fallback_row(tmp_path: Path) -> None:
    from rsna_aneurysm.infer.predictor import Predictor, PredictorConfig

    # The limit travels with the weights' preprocessing settings into every budget level's config.
    run = _helper.make_weights(tmp_path / "run", preprocessing={"spacing": [1.0, 1.0, 1.0], "mask": "head",
                                                                 "max_voxels": 1000})
    folder = _one_series(tmp_path / "test")
    cfg = PredictorConfig(share_root=str(tmp_path / "share"), tta_flip=False, use_budget=False)
    predictor = Predictor.from_weights(run, cfg)
    row = predictor.predict(str(folder))
    assert row.columns == list(LABEL_COLS)
    assert row.row(0) == pytest.approx(predictor.fallback_values)
    assert predictor.n_fallback == 1 and predictor.n_predicted == 0
    uid, reason = predictor.fallback_reasons[0]
    assert uid == folder.name and reason.startswith("GridTooLargeError") and "max_voxels" in reason
    summary = predictor.summary()
    assert summary["fallback_kinds"] == {"GridTooLargeError": 1}
    assert all(c.max_voxels == 1000 for c in predictor.pre_cfg.values())


def _loader_accepting_any_spacing(monkeypatch) -> None:
    """The loader's own plausibility checks (where it has them) widened, so the voxel limit is what stops the
    series."""
    import dataclasses

    from rsna_aneurysm.io import dicom

    wide = {"pixel_spacing_range": (0.01, 1e4), "slice_spacing_range": (0.01, 1e4), "max_extent_mm": 1e7}
    wide = {k: v for k, v in wide.items() if k in {f.name for f in dataclasses.fields(dicom.LoadOptions)}}
    original = dicom.load_series

    def load(folder, options=None, modality=None):
        opts = dataclasses.replace(options or dicom.LoadOptions(), **wide)
        return original(folder, opts, modality)
    monkeypatch.setattr(dicom, "load_series", load)


def test_predictor_default_limit_on_a_header_claiming_huge_pixels(tmp_path: Path, monkeypatch) -> None:
    from rsna_aneurysm.infer.predictor import Predictor, PredictorConfig

    _loader_accepting_any_spacing(monkeypatch)
    _no_resample(monkeypatch)
    run = _helper.make_weights(tmp_path / "run")
    folder = _one_series(tmp_path / "test", spacing_mm=400.0)  # >= 12800 mm across: > 3e9 voxels
    cfg = PredictorConfig(share_root=str(tmp_path / "share"), tta_flip=False, use_budget=True)
    predictor = Predictor.from_weights(run, cfg)
    t0 = time.perf_counter()
    row = predictor.predict(str(folder))
    assert time.perf_counter() - t0 < 10.0
    assert row.row(0) == pytest.approx(predictor.fallback_values)
    assert predictor.fallback_kinds == {"GridTooLargeError": 1}, predictor.fallback_reasons
    assert folder.name in predictor.fallback_reasons[0][1]  # the message names the series folder
    # every budget level (coarser spacing_scale included) is bounded by the default
    assert predictor.pre_cfg and all(c.max_voxels == DEFAULT_MAX_VOXELS for c in predictor.pre_cfg.values())


def _plausible_header_series(folder: Path, shape_kji: tuple[int, int, int] = (48, 96, 96), pixel_mm: float = 10.0,
                             slice_mm: float = 20.0) -> Path:
    """A CT series inside every plausibility range of the loader (10 mm pixels, 20 mm slices, < 1 m along each axis)
    that still spans ~1 m^3: a tiny synthetic slice's tags as the template, a ball of tissue in air as pixels."""
    from pydicom.uid import generate_uid

    template_dir = folder.parent / "template"
    make_series(template_dir, SeriesSpec(modality="CTA", preset="tiny", test_tags_only=True, tilt=False,
                                         locations=()), keep_volume=False)
    template = pydicom.dcmread(sorted(template_dir.glob("*.dcm"))[0])
    hu = _head(1.0, shape_kji).array
    slope, intercept = float(template.get("RescaleSlope", 1.0)), float(template.get("RescaleIntercept", 0.0))
    stored = np.round((hu - intercept) / slope).astype(np.int16 if template.PixelRepresentation else np.uint16)
    folder.mkdir(parents=True)
    series_uid = generate_uid()
    for n in range(shape_kji[0]):
        ds = template.copy()
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = series_uid, generate_uid(), n + 1
        ds.Rows, ds.Columns = shape_kji[1], shape_kji[2]
        ds.PixelSpacing = [pixel_mm, pixel_mm]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, n * slice_mm]
        ds.SliceThickness = slice_mm
        ds.PixelData = np.ascontiguousarray(stored[n]).tobytes()
        ds.save_as(folder / f"{n:04d}.dcm")
    return folder


def test_a_header_the_loader_accepts_can_still_ask_for_a_huge_grid(tmp_path: Path, monkeypatch) -> None:
    """The loader's plausibility ranges alone do not bound the grid: here only the resampling limit stops it (a
    head box of ~5e8 voxels at 1 mm), through the real loader, as a counted fallback row."""
    from rsna_aneurysm.infer.predictor import Predictor, PredictorConfig

    folder = _plausible_header_series(tmp_path / "test" / "1.2.826.0.1.9999.78")
    _no_resample(monkeypatch)
    run = _helper.make_weights(tmp_path / "run", spacing_mm=1.0)  # a model at 1 mm, the kit's finest spacing
    cfg = PredictorConfig(share_root=str(tmp_path / "share"), tta_flip=False, use_budget=False)
    predictor = Predictor.from_weights(run, cfg)
    row = predictor.predict(str(folder))
    assert row.row(0) == pytest.approx(predictor.fallback_values)
    assert predictor.fallback_kinds == {"GridTooLargeError": 1}, predictor.fallback_reasons
    assert "PreprocessConfig.max_voxels" in predictor.fallback_reasons[0][1]


def test_the_kernel_is_bounded_even_when_training_ran_without_a_limit() -> None:
    from rsna_aneurysm.infer.pipeline import preprocess_config

    cfg = preprocess_config({"preprocessing": {"max_voxels": None, "spacing": [1.0, 1.0, 1.0]}}, 1.5)
    assert cfg.max_voxels == DEFAULT_MAX_VOXELS and cfg.spacing == (1.5, 1.5, 1.5)
    assert preprocess_config({"preprocessing": {"max_voxels": 12345}}, 1.0).max_voxels == 12345
