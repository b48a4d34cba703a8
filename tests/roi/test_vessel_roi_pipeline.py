"""The vessel-ROI pipeline end to end on tiny synthetic data: `roi train` makes a complete weights folder, the
kernel's rows equal the out-of-fold rows (parity), packaging ships what the kernel needs, the budget ladder drops
TTA first, and a rerun resumes instead of retraining."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rsna_aneurysm.config import from_dict
from rsna_aneurysm.constants import ID_COL, LABEL_COLS
from rsna_aneurysm.infer.oof import run_oof
from rsna_aneurysm.infer.pipeline import PredictorConfig, ScanPipeline, WeightsError
from rsna_aneurysm.infer.predictor import Predictor
from rsna_aneurysm.layout import SEGMENTER_FLAT
from rsna_aneurysm.roi.data import RoiConfig
from rsna_aneurysm.roi.stage import has_vessel_roi
from rsna_aneurysm.roi.train import RoiTrainConfig, train_roi_run
from rsna_aneurysm.vessels.train import SegmenterConfig, train_segmenter

TOL = 1e-5
ROI_CFG = from_dict(RoiTrainConfig, {"roi": {"spacing_mm": 4.0, "shape": [16, 16, 24], "jitter_vox": 1},
                                     "region": {"box_mm": [96.0, 64.0, 64.0]}, "dilate_vox": 1, "epochs": 2,
                                     "batch_size": 2, "n_folds": 2, "sphere_radius_vox": 1.5, "workers": 1,
                                     "threads": 2})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import rsna_aneurysm.data.synth.dataset as synth_dataset
    from rsna_aneurysm.data.synth import generate_dataset
    from rsna_aneurysm.preprocess.dataset import preprocess_dataset
    from rsna_aneurysm.preprocess.pipeline import PreprocessConfig

    root = tmp_path_factory.mktemp("vessel_roi")
    rate = synth_dataset.SEGMENTATION_RATE
    synth_dataset.SEGMENTATION_RATE = 0.5
    try:
        generate_dataset(root / "data", n_series=8, preset="tiny", seed=4, n_test=3)
    finally:
        synth_dataset.SEGMENTATION_RATE = rate
    preprocess_dataset(root / "data", root / "pre", PreprocessConfig(spacing=(4.0, 4.0, 4.0)), progress=False)
    train_segmenter(root / "pre", root / "seg", SegmenterConfig(spacing_mm=4.0, patch=(16, 16, 16), epochs=2,
                                                                steps_per_epoch=3, batch_size=2, threads=2))
    results = train_roi_run(root / "pre", root / "seg", root / "roi", ROI_CFG)
    (root / "roi" / "predictor.json").write_text(json.dumps({"tta_flip": True}))
    return {"data": root / "data", "pre": root / "pre", "seg": root / "seg", "roi": root / "roi",
            "results": results}


def _settings(weights: Path, **kw) -> PredictorConfig:
    return replace(PredictorConfig(tta_flip=True), share_root=None, use_budget=False, **kw)


def test_roi_train_writes_a_complete_vessel_roi_weights_folder(run: dict[str, Path]) -> None:
    roi = run["roi"]
    assert has_vessel_roi(roi)
    assert {p.name for p in roi.iterdir()} >= {"roi.json", "config.json", "summary.json", "vessels", "fold_0",
                                               "fold_1", "roi_cache"}
    for fold in (0, 1):
        assert (roi / f"fold_{fold}" / "best.pt").is_file() and (roi / f"fold_{fold}" / "last.pt").is_file()
    summary = json.loads((roi / "summary.json").read_text())
    assert summary["cache"]["series"] == 8
    pipeline = ScanPipeline(roi, _settings(roi))
    assert pipeline.name == "vessel-roi" and pipeline.n_folds == 2
    with pytest.raises(WeightsError, match="vessel-ROI run"):
        ScanPipeline(roi, _settings(roi, pipeline="two_stage"))


def test_oof_rows_equal_the_kernel_rows(run: dict[str, Path], tmp_path: Path) -> None:
    cfg = _settings(run["roi"])
    oof = run_oof(run["roi"], run["pre"], None, cfg, out=tmp_path / "oof.parquet").sort(ID_COL)
    assert oof.height == 8 and set(oof["fold"].to_list()) == {0, 1}
    # The segmenter learnt the labelled series of both folds: the report says the region estimate is optimistic.
    regions = json.loads((tmp_path / "oof_regions.json").read_text())
    assert regions["finder_saw_validation"] == 4 and regions["estimate"].startswith("optimistic")
    for fold in (0, 1):
        part = oof.filter(pl.col("fold") == fold)
        predictor = Predictor(run["roi"], replace(cfg, folds=[fold]))
        kernel = np.stack([predictor.predict(str(run["data"] / "series" / u)).to_numpy()[0]
                           for u in part[ID_COL].to_list()])
        assert predictor.n_fallback == 0, predictor.fallback_reasons
        np.testing.assert_allclose(part.select(LABEL_COLS).to_numpy(), kernel, atol=TOL, rtol=0)


def test_the_budget_ladder_drops_tta_first(run: dict[str, Path]) -> None:
    predictor = Predictor(run["roi"], replace(_settings(run["roi"]), use_budget=True))
    levels = predictor.levels
    assert levels[0].tta and levels[0].n_folds == 2
    assert not levels[1].tta and levels[1].n_folds == 2
    assert levels[2].n_folds == 1


def test_packaged_weights_predict_the_same_rows(run: dict[str, Path], tmp_path: Path) -> None:
    from rsna_aneurysm.kaggle.package import stage_weights

    dest = tmp_path / "weights_dataset"
    dest.mkdir()
    stage_weights(run["roi"], dest)
    names = {p.name for p in dest.iterdir()}
    assert {"roi.json", SEGMENTER_FLAT, "fold_0.pt", "fold_1.pt", "prevalence.json", "predictor.json"} <= names
    assert not any(p.is_dir() for p in dest.iterdir())  # Kaggle datasets hold no folders
    uid = sorted(p.name for p in (run["data"] / "series").iterdir())[0]
    a = Predictor(run["roi"], _settings(run["roi"])).predict(str(run["data"] / "series" / uid)).to_numpy()
    b = Predictor(dest, _settings(dest)).predict(str(run["data"] / "series" / uid)).to_numpy()
    np.testing.assert_allclose(a, b, atol=TOL, rtol=0)


def test_a_rerun_resumes_instead_of_retraining(run: dict[str, Path]) -> None:
    before = {f: (run["roi"] / f"fold_{f}" / "best.pt").stat().st_mtime_ns for f in (0, 1)}
    again = train_roi_run(run["pre"], run["seg"], run["roi"], ROI_CFG)
    assert {f: (run["roi"] / f"fold_{f}" / "best.pt").stat().st_mtime_ns for f in (0, 1)} == before
    assert [len(v["history"]) for v in again.values()] == [ROI_CFG.epochs] * 2


def test_training_from_scratch_is_a_switch(run: dict[str, Path], tmp_path: Path) -> None:
    from rsna_aneurysm.train.checkpoint import load_checkpoint

    cfg = replace(ROI_CFG, pretrained=False, epochs=1, folds=[0])
    train_roi_run(run["pre"], run["seg"], tmp_path / "scratch", cfg, cache_dir=run["roi"] / "roi_cache")
    scratch = load_checkpoint(tmp_path / "scratch" / "fold_0" / "best.pt")
    pretrained = load_checkpoint(run["roi"] / "fold_0" / "best.pt")
    assert scratch["pretrained"] is False and pretrained["pretrained"] is True
    assert pretrained["transfer"]["copied"] > 0 and scratch.get("transfer") is None


def test_roi_cache_config_check() -> None:
    with pytest.raises(Exception, match="shape"):
        RoiConfig(shape=(4, 4, 4))


def test_pipelines_report_scores_vessel_roi_beside_the_others(run: dict[str, Path], tmp_path: Path) -> None:
    import weights_helper

    from rsna_aneurysm.infer.compare import compare_pipelines

    pre_cfg = json.loads((run["pre"] / "config.json").read_text())
    fine = weights_helper.make_weights(tmp_path / "fine", folds=(0, 1), patch=16, spacing_mm=4.0,
                                       preprocessing=pre_cfg)
    weights_helper.add_region(fine)
    cfg = json.loads((fine / "config.json").read_text())  # the ROI run's folds: the one fold function, k=2, seed 0
    cfg["data"] = {"preprocessed": str(run["pre"]), "folds": None, "n_folds": 2, "fold_seed": 0}
    (fine / "config.json").write_text(json.dumps(cfg))
    report = compare_pipelines(fine, tmp_path / "report", cfg=_settings(fine), test_dir=run["data"] / "test",
                               roi_runs=[("vessel-ROI", run["roi"])])
    rows = report["pipelines"]
    assert list(rows) == ["whole-scan", "two-stage", "vessel-ROI"]
    assert all(r["series"] == 8 and r["test"]["series"] == 3 for r in rows.values())
    assert set(report["test_differences"]) == {"whole-scan", "vessel-ROI"}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| vessel-ROI | 8 |" in md and "paired bootstrap" in md


def test_the_cache_built_in_worker_processes_equals_the_sequential_one(run: dict[str, Path], tmp_path: Path) -> None:
    from rsna_aneurysm.roi.train import build_cache

    uids = sorted(p.name for p in (run["data"] / "series").iterdir())[:3]
    index = build_cache(run["pre"], run["roi"], tmp_path / "cache", replace(ROI_CFG, workers=2), uids=uids)
    assert sorted(index[ID_COL].to_list()) == uids
    for uid in uids:
        with np.load(tmp_path / "cache" / f"{uid}.npz") as a, np.load(run["roi"] / "roi_cache" / f"{uid}.npz") as b:
            for key in ("image", "vessels", "centers", "labels", "grid_origin"):
                np.testing.assert_array_equal(a[key], b[key])


def test_a_trained_nnunet_folder_can_be_the_segmenter(run: dict[str, Path], tmp_path: Path) -> None:
    from nnunet_folder import write_folder  # tests/helpers

    folder = write_folder(tmp_path / "nnunet", spacing=(4.0, 4.0, 4.0))
    cfg = _settings(run["roi"], nnunet_folder=str(folder), nnunet_folds=[0])
    pipeline = ScanPipeline(run["roi"], cfg).load()
    assert pipeline.vessel_parts.segmenter_source.startswith("nnU-Net")
    uid = sorted(p.name for p in (run["data"] / "series").iterdir())[0]
    row = Predictor(run["roi"], cfg).predict(str(run["data"] / "series" / uid)).to_numpy()
    assert np.isfinite(row).all() and ((row >= 0) & (row <= 1)).all()
