"""Hostile series, built here, end to end: the kernel's predictor answers a gateway-valid row for every one (the
model's, or the fallback row with a logged reason), and ``preprocess`` records every one and finishes.

Each case is one class of the hostile-input issue: headers that claim a huge extent or frame count, two series in
one folder, one bad slice, absurd geometry, an unknown transfer syntax, an unsafe UID in the table."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import polars as pl
import pydicom
import pytest
import weights_helper as _helper

from rsna_aneurysm.constants import ID_COL, LABEL_COLS
from rsna_aneurysm.data.synth import SeriesSpec, make_series
from rsna_aneurysm.infer.gateway import run_gateway
from rsna_aneurysm.infer.predictor import Predictor, PredictorConfig
from rsna_aneurysm.preprocess.dataset import preprocess_dataset
from rsna_aneurysm.preprocess.pipeline import PreprocessConfig


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


def _edit_all(folder: Path, edit) -> None:
    for f in _files(folder):
        ds = pydicom.dcmread(f)
        edit(ds)
        ds.save_as(f)


def _spacing(mm: float):
    def edit(ds):
        ds.PixelSpacing = [mm, mm]
    return edit


def _frames(n: int):
    def edit(ds):
        ds.NumberOfFrames = n
    return edit


def _cut_one(folder: Path) -> None:
    victim = _files(folder)[len(_files(folder)) // 2]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    ds.save_as(victim)


def _far_slice(folder: Path) -> None:
    victim = _files(folder)[0]
    ds = pydicom.dcmread(victim)
    ds.ImagePositionPatient = [0.0, 0.0, 1e6]
    ds.save_as(victim)


def _unknown_syntax(folder: Path) -> None:
    for f in _files(folder):
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
        ds.save_as(f, enforce_file_format=True)


def _second_series(folder: Path) -> None:
    other = folder.parent / "_other"
    make_series(other, SeriesSpec(modality="CTA", preset="tiny", seed=99, test_tags_only=True),
                series_uid="1.2.826.0.1.9999.777", keep_volume=False)
    for f in _files(other):
        shutil.move(str(f), folder / f"other_{f.name}")
    shutil.rmtree(other)


CASES = {  # name -> (spec, edit of the written folder)
    "spacing-30mm": (SeriesSpec(modality="CTA"), lambda d: _edit_all(d, _spacing(30.0))),
    "spacing-100mm": (SeriesSpec(modality="MRA"), lambda d: _edit_all(d, _spacing(100.0))),
    "spacing-nan": (SeriesSpec(modality="CTA"), lambda d: _edit_all(d, _spacing(math.nan))),
    "spacing-1e-6": (SeriesSpec(modality="CTA"), lambda d: _edit_all(d, _spacing(1e-6))),
    "frames-100000": (SeriesSpec(modality="CTA", multiframe=True), lambda d: _edit_all(d, _frames(100000))),
    "two-series": (SeriesSpec(modality="CTA"), _second_series),
    "one-cut-slice": (SeriesSpec(modality="MRI T2"), _cut_one),
    "slice-1e6-mm-away": (SeriesSpec(modality="CTA"), _far_slice),
    "unknown-transfer-syntax": (SeriesSpec(modality="MRA"), _unknown_syntax),
    "intact": (SeriesSpec(modality="CTA"), lambda d: None),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile")
    uids = {}
    for n, (name, (spec, edit)) in enumerate(CASES.items()):
        uid = f"1.2.826.0.1.9999.{n}"
        spec = SeriesSpec(**{**spec.__dict__, "preset": "tiny", "test_tags_only": True, "seed": n})
        make_series(root / "series" / uid, spec, series_uid=uid, keep_volume=False)
        edit(root / "series" / uid)
        uids[name] = uid
    pl.DataFrame({ID_COL: list(uids.values())}).write_csv(root / "test.csv")
    return root, uids


def test_the_kernel_answers_a_valid_row_for_every_hostile_series(tmp_path, hostile, caplog):
    root, uids = hostile
    run = _helper.make_weights(tmp_path / "run", folds=(0,))
    share = tmp_path / "share"
    predictor = Predictor.from_weights(run, PredictorConfig(share_root=str(share), tta_flip=False, use_budget=False))
    result = run_gateway(predictor.predict, root, share_root=share, seed=0, out_path=tmp_path / "sub.parquet")
    assert result.ok, result.summary()
    sub = pl.read_parquet(tmp_path / "sub.parquet")
    assert sub.height == len(CASES) and sub.columns == [ID_COL, *LABEL_COLS]
    assert all(0.0 <= v <= 1.0 for c in LABEL_COLS for v in sub[c].to_list())
    fell_back = dict(predictor.fallback_reasons)
    assert uids["intact"] not in fell_back and uids["two-series"] not in fell_back
    assert uids["one-cut-slice"] not in fell_back  # one bad slice is filled from its neighbours, not the series lost
    assert uids["slice-1e6-mm-away"] not in fell_back  # the far slice is dropped
    for name in ("spacing-30mm", "spacing-100mm", "spacing-nan", "spacing-1e-6", "frames-100000",
                 "unknown-transfer-syntax"):
        assert uids[name] in fell_back, name
        assert fell_back[uids[name]], name  # a logged reason


def test_preprocess_records_every_hostile_series_and_finishes(tmp_path, hostile):
    root, uids = hostile
    data = tmp_path / "data"
    shutil.copytree(root / "series", data / "series")
    table = pl.DataFrame({ID_COL: list(uids.values()), "Modality": [spec.modality for spec, _ in CASES.values()],
                          **{c: [0] * len(uids) for c in LABEL_COLS}})
    table.write_csv(data / "train.csv")
    out = tmp_path / "pre"
    manifest = preprocess_dataset(data, out, PreprocessConfig(spacing=(2.0, 2.0, 2.0)), workers=1, progress=False)
    assert sorted(manifest[ID_COL].to_list()) == sorted(uids.values())
    status = dict(zip(manifest[ID_COL].to_list(), manifest["status"].to_list()))
    errors = dict(zip(manifest[ID_COL].to_list(), manifest["error"].to_list()))
    for name in ("intact", "one-cut-slice", "slice-1e6-mm-away", "two-series"):
        assert status[uids[name]] == "ok", (name, errors[uids[name]])
    for name in ("spacing-30mm", "spacing-100mm", "spacing-nan", "spacing-1e-6", "frames-100000",
                 "unknown-transfer-syntax"):
        assert status[uids[name]] != "ok" and errors[uids[name]], name
    assert {p.name for p in tmp_path.iterdir()} == {"data", "pre"}  # nothing written beside the output folder
