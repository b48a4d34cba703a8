"""The two-stage pipeline end to end on tiny synthetic data: region cache, predictor, oof report, mining, packaging."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import weights_helper as _helper

from rsna_aneurysm.cli import main
from rsna_aneurysm.constants import ID_COL, LABEL_COLS
from rsna_aneurysm.data.cache import CacheConfig, build_cache, read_index
from rsna_aneurysm.data.synth import generate_dataset
from rsna_aneurysm.infer.mine import mine_negatives
from rsna_aneurysm.infer.predictor import Predictor
from rsna_aneurysm.preprocess.dataset import preprocess_dataset
from rsna_aneurysm.preprocess.pipeline import PreprocessConfig
from rsna_aneurysm.region.finder import FinderConfig, RegionConfig
from rsna_aneurysm.region.targets import build_targets
from rsna_aneurysm.region.train_finder import train_region_finder
from rsna_aneurysm.volume import Volume


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("two_stage")
    generate_dataset(root / "data", n_series=8, preset="tiny", seed=11, n_test=3)
    preprocess_dataset(root / "data", root / "pre", PreprocessConfig(spacing=(4.0, 4.0, 4.0)))
    build_targets(root / "pre", root / "data")
    run = _helper.make_weights(root / "run", folds=(0, 1), patch=16, spacing_mm=4.0)
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"] = {"preprocessed": str(root / "pre"), "folds": None, "n_folds": 2, "fold_seed": 7}
    (run / "config.json").write_text(json.dumps(cfg))
    train_region_finder(root / "pre", run, RegionConfig(
        box_mm=(96.0, 80.0, 80.0), finder=FinderConfig(view_shape=(24, 24, 24), view_spacing_mm=9.0, epochs=3,
                                                      channels=(2, 4, 8), batch_size=4, shift_mm=18.0)))
    (run / "predictor.json").write_text(json.dumps({"tta_flip": False, "window": {"overlap": 0.0}}))
    return {"data": root / "data", "pre": root / "pre", "run": run}


def test_region_cache_draws_negatives_inside_the_region(two_stage: dict[str, Path], tmp_path: Path) -> None:
    pre = two_stage["pre"]
    box = (60.0, 50.0, 50.0)
    cfg = CacheConfig(patch_size=(8, 8, 8), spacing_mm=4.0, jitter_mm=4.0, positives_per_aneurysm=2,
                      min_negatives_per_series=6, sphere_radius_mm=4.0, safety_radius_mm=2.0, region_box_mm=box)
    build_cache(pre, tmp_path / "cache", cfg, workers=1, progress=False)
    index = read_index(tmp_path / "cache")
    targets = pl.read_parquet(pre / "region_targets.parquet")
    manifest = pl.read_parquet(pre / "manifest.parquet")
    negs = index.filter(pl.col("kind") != "pos").join(targets, on=ID_COL).join(
        manifest.select(ID_COL, "origin", "spacing_ijk", "shape_kji"), on=ID_COL)
    assert negs.height > 0
    for r in negs.iter_rows(named=True):
        vol = Volume(array=np.empty((0, 0, 0)), spacing=tuple(r["spacing_ijk"]), origin=tuple(r["origin"]))
        centre = np.rint(vol.world_to_index(np.array([[r["center_x"], r["center_y"], r["center_z"]]]))[0])
        centre = np.clip(centre, 0, np.asarray(r["shape_kji"][::-1]) - 1)
        w = vol.index_to_world(np.array([[r["center_i"], r["center_j"], r["center_k"]]], dtype=float))[0]
        c = vol.index_to_world(centre[None, :])[0]
        assert np.all(np.abs(w - c) <= np.asarray(box) / 2 + 4.0 + 1e-6), (w, c)


def test_two_stage_predictor_answers_every_series_with_the_split(two_stage: dict[str, Path]) -> None:
    run, data = two_stage["run"], two_stage["data"]
    predictor = Predictor.from_weights(run, overrides={"share_root": None})
    assert predictor.two_stage
    series = sorted((data / "test" / "series").iterdir())
    for folder in series:
        row = predictor.predict(str(folder))
        assert row.columns == list(LABEL_COLS) and row.height == 1
        values = row.to_numpy()[0]
        assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()
    assert predictor.n_fallback == 0 and predictor.n_predicted == len(series)
    rec = predictor.records[-1]
    assert rec["region_source"] in ("finder", "fallback") and rec["region_s"] >= 0.0
    summary = predictor.summary()
    assert summary["pipeline"] == "two-stage" and "region_s" in summary["mean_s"]
    # Heatmaps for the viewer are written on the region crop's grid (box size at the inference spacing).
    heat_pred = Predictor.from_weights(run, overrides={"share_root": None, "heatmap_dir": str(run.parent / "heat")})
    heat_pred.predict(str(series[0]))
    from rsna_aneurysm.io.nifti import read_volume

    heat = read_volume(run.parent / "heat" / f"{series[0].name}.nii.gz", mmap=False)
    box = np.asarray(heat_pred.records[-1]["region_box_mm"])
    assert np.allclose(np.asarray(heat.array.shape[::-1]) * np.asarray(heat.spacing), box, atol=4.0 + 1e-6)
    # The same weights forced onto the whole-scan pipeline give other numbers (the crop changes what is seen).
    whole = Predictor.from_weights(run, overrides={"share_root": None, "pipeline": "whole"})
    assert not whole.two_stage
    whole.predict(str(series[0]))
    assert whole.summary()["pipeline"] == "whole-scan"


def test_pipelines_report_scores_both_on_the_same_series(two_stage: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    rc = main(["pipelines", "--weights", str(two_stage["run"]), "--out", str(tmp_path / "rep"),
               "--test", str(two_stage["data"])])
    assert rc == 0
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    p = report["pipelines"]
    assert set(p) == {"whole-scan", "two-stage"}
    assert p["whole-scan"]["series"] == p["two-stage"]["series"] == 8
    assert "region" in p["two-stage"] and 0.0 <= p["two-stage"]["region"]["recall"] <= 1.0
    a = pl.read_parquet(tmp_path / "rep" / "oof_whole.parquet").sort(ID_COL)
    b = pl.read_parquet(tmp_path / "rep" / "oof_two_stage.parquet").sort(ID_COL)
    assert a[ID_COL].to_list() == b[ID_COL].to_list() and a["fold"].to_list() == b["fold"].to_list()
    assert "| two-stage |" in (tmp_path / "rep" / "report.md").read_text()
    # The test set, predicted as the kernel would, by both pipelines.
    for name in p:
        t = p[name]["test"]
        assert t["series"] == 3 and t["fallback"] == 0 and 0.0 <= t["score"] <= 1.0
    sub = pl.read_parquet(tmp_path / "rep" / "test_two_stage.parquet")
    assert sub.columns == [ID_COL, *LABEL_COLS] and sub.height == 3
    assert "two-stage" in capsys.readouterr().out


def test_mining_keeps_clear_of_aneurysms_and_feeds_the_cache(two_stage: dict[str, Path], tmp_path: Path) -> None:
    pre = two_stage["pre"]
    mined = mine_negatives(two_stage["run"], fold=0, top_k=6, min_heat=0.0, safety_mm=8.0,
                           out=tmp_path / "mined.parquet")
    assert mined.height > 0 and set(mined.columns) >= {ID_COL, "world_x", "world_y", "world_z", "heat"}
    locs = pl.read_parquet(pre / "localizers.parquet").filter(pl.col("world_x").is_not_null())
    for r in mined.iter_rows(named=True):
        pts = locs.filter(pl.col(ID_COL) == r[ID_COL]).select("world_x", "world_y", "world_z").to_numpy()
        if len(pts):
            assert np.linalg.norm(pts - np.array([r["world_x"], r["world_y"], r["world_z"]]), axis=1).min() > 8.0
    cfg = CacheConfig(patch_size=(8, 8, 8), spacing_mm=4.0, jitter_mm=4.0, positives_per_aneurysm=1,
                      min_negatives_per_series=1, sphere_radius_mm=4.0, safety_radius_mm=2.0,
                      mined_negatives=str(tmp_path / "mined.parquet"), mined_per_point=1)
    build_cache(pre, tmp_path / "cache", cfg, workers=1, progress=False)
    index = read_index(tmp_path / "cache")
    got = index.filter(pl.col("kind") == "mined")
    assert got.height > 0 and (got["Aneurysm Present"] == 0).all()
    # A missing mined table is a clear error naming it.
    from rsna_aneurysm.data.cache import CacheError

    bad = CacheConfig(patch_size=(8, 8, 8), spacing_mm=4.0, mined_negatives=str(tmp_path / "nope.parquet"))
    with pytest.raises(CacheError, match="nope.parquet"):
        build_cache(pre, tmp_path / "cache2", bad, workers=1, progress=False)


def test_package_ships_the_region_files_flat(two_stage: dict[str, Path], tmp_path: Path) -> None:
    rc = main(["package", "--weights", str(two_stage["run"]), "--out", str(tmp_path / "kaggle"), "--no-wheels",
               "--owner", "someone"])
    assert rc == 0
    weights = next((tmp_path / "kaggle" / "datasets").glob("*weights*"))
    names = {p.name for p in weights.iterdir()}
    assert {"region.json", "region_finder.pt", "region_atlas.parquet"} <= names
    assert not any(p.is_dir() for p in weights.iterdir())
    packaged = Predictor.from_weights(weights, overrides={"share_root": None})
    assert packaged.two_stage
    folder = next((two_stage["data"] / "test" / "series").iterdir())
    packaged.predict(str(folder))
    assert packaged.n_fallback == 0 and packaged.records[-1]["region_source"] in ("finder", "fallback")
