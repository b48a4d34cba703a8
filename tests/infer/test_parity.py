"""Parity: every caller of the scan pipeline answers the same row for the same series.

The out-of-fold table (from the preprocessed NIfTI), the kernel's predictor (from the raw DICOM folder) and the
viewer's live prediction must agree for both pipelines: these are the tests that catch a drifted copy.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import weights_helper as _helper

from rsna_aneurysm.config import load_config
from rsna_aneurysm.constants import ID_COL, LABEL_COLS
from rsna_aneurysm.data.synth import generate_dataset
from rsna_aneurysm.infer.oof import run_oof
from rsna_aneurysm.infer.pipeline import PredictorConfig, ScanPipeline
from rsna_aneurysm.infer.predictor import Predictor
from rsna_aneurysm.preprocess.dataset import preprocess_dataset
from rsna_aneurysm.preprocess.pipeline import PreprocessConfig
from rsna_aneurysm.region.finder import FinderConfig, RegionConfig
from rsna_aneurysm.region.targets import build_targets
from rsna_aneurysm.region.train_finder import train_region_finder, train_region_finders_per_fold

# Kernel rows come from a fresh DICOM read and preprocessing, OOF rows from the NIfTI written by `preprocess`
# (float32 voxels, geometry through a float32 affine): equal up to that rounding.
TOL = 1e-5


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parity")
    generate_dataset(root / "data", n_series=6, preset="tiny", seed=5, n_test=0)
    preprocess_dataset(root / "data", root / "pre", PreprocessConfig(spacing=(4.0, 4.0, 4.0)))
    build_targets(root / "pre", root / "data")
    pre_cfg = json.loads((root / "pre" / "config.json").read_text())
    run = _helper.make_weights(root / "run", folds=(0, 1), patch=16, spacing_mm=4.0, preprocessing=pre_cfg)
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"] = {"preprocessed": str(root / "pre"), "folds": None, "n_folds": 2, "fold_seed": 7}
    (run / "config.json").write_text(json.dumps(cfg))
    train_region_finder(root / "pre", run, RegionConfig(
        box_mm=(96.0, 80.0, 80.0), finder=FinderConfig(view_shape=(24, 24, 24), view_spacing_mm=9.0, epochs=2,
                                                      channels=(2, 4, 8), batch_size=4)))
    (run / "predictor.json").write_text(json.dumps({"tta_flip": True, "window": {"overlap": 0.25}}))
    return {"data": root / "data", "pre": root / "pre", "run": run}


def _settings(run: Path, pipeline: str) -> PredictorConfig:
    cfg = load_config(PredictorConfig, run / "predictor.json")
    return replace(cfg, pipeline=pipeline, share_root=None, use_budget=False)


def _kernel_rows(run: Path, data: Path, cfg: PredictorConfig, fold: int, uids: list[str]) -> np.ndarray:
    predictor = Predictor(run, replace(cfg, folds=[fold]))
    rows = [predictor.predict(str(data / "series" / u)).to_numpy()[0] for u in uids]
    assert predictor.n_fallback == 0, predictor.fallback_reasons
    return np.stack(rows)


@pytest.mark.parametrize("pipeline", ["whole", "two_stage"])
def test_oof_rows_equal_the_kernel_rows(run: dict[str, Path], tmp_path: Path, pipeline: str) -> None:
    cfg = _settings(run["run"], pipeline)
    oof = run_oof(run["run"], run["pre"], None, cfg, out=tmp_path / "oof.parquet").sort(ID_COL)
    assert oof.height == 6 and set(oof["fold"].to_list()) == {0, 1}
    for fold in (0, 1):
        part = oof.filter(pl.col("fold") == fold)
        kernel = _kernel_rows(run["run"], run["data"], cfg, fold, part[ID_COL].to_list())
        np.testing.assert_allclose(part.select(LABEL_COLS).to_numpy(), kernel, atol=TOL, rtol=0)


@pytest.mark.parametrize("pipeline", ["whole", "two_stage"])
def test_viewer_live_prediction_equals_the_kernel_row(run: dict[str, Path], tmp_path: Path, pipeline: str) -> None:
    from rsna_aneurysm.viewer.data import open_data
    from rsna_aneurysm.viewer.live import load_predictor, run_prediction

    weights = tmp_path / "weights"
    import shutil

    shutil.copytree(run["run"], weights)
    (weights / "predictor.json").write_text(json.dumps({**json.loads((run["run"] / "predictor.json").read_text()),
                                                         "pipeline": pipeline}))
    uid = sorted(p.name for p in (run["data"] / "series").iterdir())[0]
    series = open_data(run["pre"]).load(uid)
    live = run_prediction(load_predictor(weights), series, tmp_path / "live")
    kernel = _kernel_rows(weights, run["data"], _settings(weights, pipeline), 0, [uid])[0]
    kernel_all = Predictor(weights, _settings(weights, pipeline)).predict(str(run["data"] / "series" / uid))
    np.testing.assert_allclose([live.probs[c] for c in LABEL_COLS], kernel_all.to_numpy()[0], atol=TOL, rtol=0)
    assert live.n_passes == 2 * 2  # both folds, each with its mirrored pass
    assert not np.allclose(kernel, kernel_all.to_numpy()[0])  # one fold alone is another ensemble


def test_a_failing_region_finder_costs_no_row(run: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from rsna_aneurysm.region.finder import RegionLocator

    def broken(self, view, grid):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(RegionLocator, "run_finder", broken)
    predictor = Predictor(run["run"], _settings(run["run"], "two_stage"))
    uid = sorted(p.name for p in (run["data"] / "series").iterdir())[0]
    row = predictor.predict(str(run["data"] / "series" / uid))
    assert predictor.n_fallback == 0 and np.isfinite(row.to_numpy()).all()
    assert predictor.records[-1]["region_source"] == "fallback"
    assert "finder failed: RuntimeError" in predictor.records[-1]["region_reason"]


def test_oof_uses_the_per_fold_finder_and_says_whether_the_estimate_is_out_of_fold(run: dict[str, Path],
                                                                                  tmp_path: Path) -> None:
    import shutil

    weights = tmp_path / "weights"
    shutil.copytree(run["run"], weights)
    cfg = _settings(weights, "two_stage")
    run_oof(weights, run["pre"], None, cfg, out=tmp_path / "a" / "oof.parquet")
    shared = json.loads((tmp_path / "a" / "oof_regions.json").read_text())
    assert shared["finder_saw_validation"] == 6 and shared["estimate"].startswith("optimistic")

    from rsna_aneurysm.infer.oof import series_folds

    folds = series_folds(json.loads((weights / "config.json").read_text()), run["pre"])
    train_region_finders_per_fold(run["pre"], weights, folds, RegionConfig(
        box_mm=(96.0, 80.0, 80.0), finder=FinderConfig(view_shape=(24, 24, 24), view_spacing_mm=9.0, epochs=1,
                                                      channels=(2, 4, 8), batch_size=2)))
    for fold in (0, 1):
        seen = set(json.loads((weights / "region" / f"fold_{fold}" / "finder_metrics.json").read_text())
                   ["train_series"])
        held = set(folds.filter(pl.col("fold") == fold)[ID_COL].to_list())
        assert seen and not seen & held
        assert ScanPipeline(weights, cfg, folds=[fold], region_fold=fold).load().locator.source == \
            weights / "region" / f"fold_{fold}"
    run_oof(weights, run["pre"], None, cfg, out=tmp_path / "b" / "oof.parquet")
    honest = json.loads((tmp_path / "b" / "oof_regions.json").read_text())
    assert honest["finder_saw_validation"] == 0 and honest["estimate"] == "out-of-fold"
