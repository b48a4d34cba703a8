"""Viewer data access: preprocessed and competition folders, prediction folders, heatmaps, the live predictor."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from toy import write_toy_preprocessed

from rsna_aneurysm.constants import ANEURYSM_PRESENT, ID_COL, LABEL_COLS
from rsna_aneurysm.data.synth import generate_dataset
from rsna_aneurysm.io.nifti import read_volume, write_volume
from rsna_aneurysm.viewer.data import CompetitionSource, PreprocessedSource, ViewerDataError, open_data
from rsna_aneurysm.viewer.live import load_predictor, run_prediction
from rsna_aneurysm.viewer.predictions import HeatmapError, PredictionSet, open_predictions, write_live_prediction
from rsna_aneurysm.viewer.state import (
    ViewerSettings,
    filter_series,
    initial_cursor,
    prediction_rows,
    score_table,
    series_label,
)

from .conftest import gaussian_heatmap, probs_for


def test_preprocessed_folder_table_and_series(viewer_data):
    src = open_data(viewer_data.pre)
    assert isinstance(src, PreprocessedSource) and src.ct_window == (-100.0, 700.0)
    table = src.series_table()
    assert table[ID_COL].to_list() == sorted(viewer_data.uids)
    assert set(LABEL_COLS) <= set(table.columns) and table["status"].to_list() == ["ok"] * 3
    counts = viewer_data.localizers.group_by(ID_COL).len()
    first = viewer_data.uids[0]
    assert table.filter(pl.col(ID_COL) == first)["n_localizers"][0] == counts.filter(pl.col(ID_COL) == first)["len"][0]
    s = src.load(first)
    assert s.volume.array.shape == (32, 32, 32) and s.volume.array.dtype == np.float32
    assert s.mask is not None and s.labels[ANEURYSM_PRESENT] == 1
    expected = viewer_data.localizers.filter(pl.col(ID_COL) == first)
    assert [(p["k"], p["j"], p["i"]) for p in s.gt_points()] == list(zip(expected["k"], expected["j"], expected["i"]))
    with pytest.raises(ViewerDataError, match="not in manifest"):
        src.load("1.2.3.nope")


def test_unreadable_inputs_raise_named_errors(tmp_path):
    pre = write_toy_preprocessed(tmp_path / "pre", n_series=2, shape=(16, 16, 16), broken=1)
    src = open_data(pre)
    broken = src.series_table()[ID_COL].to_list()[-1]
    with pytest.raises(ViewerDataError, match=f"{broken}.nii.gz"):
        src.load(broken)
    with pytest.raises(ViewerDataError, match="no such data folder"):
        open_data(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ViewerDataError, match="not a data folder"):
        open_data(tmp_path / "empty")


def test_competition_folder_is_preprocessed_once_and_cached(tmp_path):
    data = tmp_path / "data"
    generate_dataset(data, 2, preset="tiny", seed=5, n_test=1)
    src = open_data(data, tmp_path / "cache")
    assert isinstance(src, CompetitionSource)
    table = src.series_table()
    assert sorted(table["split"].to_list()) == ["test", "train", "train"]
    assert table.filter(pl.col("split") == "test")[ANEURYSM_PRESENT].null_count() == 0  # from test/solution.csv
    uid = table.filter(pl.col("split") == "train").sort("n_localizers", descending=True)[ID_COL][0]
    s = src.load(uid)
    truth = json.loads((data / "synth_truth.json").read_text())[uid]
    assert len(s.gt_points()) == len(truth["aneurysms"])
    tolerance = truth["spacing"][2] / 2 + 1.0  # a localizer sits on the slice nearest the centre
    for p, a in zip(s.gt_points(), truth["aneurysms"]):  # the localizer maps back to the true centre, in the volume
        world = s.volume.index_to_world([p["i"], p["j"], p["k"]])
        assert np.linalg.norm(world - np.asarray(a["center_lps"])) < tolerance
    record = src.out_dir / "records" / f"{uid}.json"
    stamp = record.stat().st_mtime_ns
    again = CompetitionSource(data, tmp_path / "cache").load(uid)
    assert record.stat().st_mtime_ns == stamp and np.array_equal(again.volume.array, s.volume.array)


def test_prediction_folder_and_training_run_layouts(viewer_data, tmp_path):
    ps = open_predictions(viewer_data.pred)
    assert ps.problems == [] and ps.thresholds[ANEURYSM_PRESENT] == 0.3 and ps.metrics["score"] == 0.8125
    assert ps.row(viewer_data.uids[1]) == pytest.approx(probs_for(1))
    assert ps.row("1.2.3.nope") is None
    run = tmp_path / "run"
    (run / "oof_report").mkdir(parents=True)
    pl.read_parquet(viewer_data.pred / "predictions.parquet").with_columns(fold=pl.lit(0)).write_parquet(
        run / "oof.parquet")
    (run / "oof_report" / "report.json").write_text(json.dumps({"score": 0.5}))
    (run / "summary.json").write_text(json.dumps({"0": {"best_epoch": 3, "best": {"score": 0.6}}}))
    (run / "thresholds.json").write_text("{not json")
    ps = open_predictions(run)
    assert ps.table.height == 3 and ps.metrics == {"score": 0.5} and ps.fold_summary["0"]["best_epoch"] == 3
    assert ps.thresholds is None and any("thresholds ignored" in p for p in ps.problems)
    # --pred first, --weights fills in what it lacks.
    assert open_predictions(run, viewer_data.pred).thresholds[ANEURYSM_PRESENT] == 0.3
    assert "no such prediction folder" in open_predictions(tmp_path / "nope").problems[0]
    # A folder of heatmaps only (``rsna-aneurysm predict --heatmaps``) takes its table from the run.
    shutil.copytree(viewer_data.pred / "heatmaps", tmp_path / "heat_only")
    mixed = open_predictions(tmp_path / "heat_only", run)
    assert mixed.table_source == str(run / "oof.parquet") and mixed.heatmap_path(viewer_data.uids[0]) is not None


def test_heatmap_on_another_grid_is_resampled(viewer_data, tmp_path):
    uid = viewer_data.uids[0]
    vol = read_volume(viewer_data.pre / f"volumes/{uid}.nii.gz")
    # A 2 mm heatmap of a crop starting at voxel (4, 4, 4), with its blob at volume voxel (k, j, i) = (20, 12, 10).
    coarse = vol.with_array(gaussian_heatmap((12, 12, 12), [(8, 4, 3)], sigma=1.0), spacing=(2.0, 2.0, 2.0),
                            origin=tuple(vol.index_to_world([4, 4, 4])))
    write_volume(coarse, tmp_path / "heatmaps" / f"{uid}.nii.gz")
    heat = PredictionSet(root=tmp_path).load_heatmap(uid, vol)
    assert heat.shape == vol.array.shape
    assert np.unravel_index(np.argmax(heat), heat.shape) == (20, 12, 10)
    assert PredictionSet(root=tmp_path).load_heatmap("other", vol) is None


@pytest.mark.parametrize("kind, message", [("garbage", "cannot be read"), ("nan", "non-finite"),
                                           ("logits", r"expected probabilities"), ("elsewhere", "does not overlap"),
                                           ("2d", "cannot be read")])
def test_bad_heatmaps_raise_heatmap_error(viewer_data, tmp_path, kind, message):
    uid = viewer_data.uids[0]
    vol = read_volume(viewer_data.pre / f"volumes/{uid}.nii.gz")
    path = tmp_path / "heatmaps" / f"{uid}.nii.gz"
    path.parent.mkdir()
    heat = gaussian_heatmap(vol.array.shape, [(16, 16, 16)])
    if kind == "garbage":
        path.write_bytes(b"\x1f\x8b truncated gzip")
    elif kind == "nan":
        heat[0, 0, 0] = np.nan
        write_volume(vol.with_array(heat), path)
    elif kind == "logits":
        write_volume(vol.with_array(heat * 8 - 4), path)
    elif kind == "elsewhere":
        write_volume(vol.with_array(heat, origin=(500.0, 500.0, 500.0)), path)
    else:
        import nibabel as nib

        nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), path)
    with pytest.raises(HeatmapError, match=message) as err:
        PredictionSet(root=tmp_path).load_heatmap(uid, vol)
    assert str(path) in str(err.value)


def test_live_table_upserts_rows(tmp_path):
    write_live_prediction(tmp_path, "a", probs_for(0))
    write_live_prediction(tmp_path, "b", probs_for(1))
    write_live_prediction(tmp_path, "a", probs_for(2))
    ps = open_predictions(tmp_path)
    assert sorted(ps.table[ID_COL].to_list()) == ["a", "b"] and ps.row("a") == pytest.approx(probs_for(2))


def test_state_helpers(viewer_data):
    src = open_data(viewer_data.pre)
    table = score_table(src.series_table(), PredictionSet(), open_predictions(viewer_data.pred))
    assert table.filter(pl.col(ID_COL) == viewer_data.uids[2])["score"][0] == pytest.approx(
        probs_for(2)[ANEURYSM_PRESENT])
    assert filter_series(table, viewer_data.uids[1][-3:]).height >= 1
    assert filter_series(table, "nothing-like-this").height == 0
    assert filter_series(table, "", ["MRA"]).height == 0
    assert "positive" in series_label(table.row(0, named=True))
    s = src.load(viewer_data.uids[0])
    p = s.gt_points()[0]
    assert initial_cursor(s) == tuple(int(round(p[c])) for c in "kji")
    rows = prediction_rows(probs_for(0), {c: 0.2 for c in LABEL_COLS}, s.labels, {c: 0.5 for c in LABEL_COLS})
    assert rows.height == 14 and rows["call"].to_list() == ["negative"] * 10 + ["positive"] * 4
    env = ViewerSettings("d", "p", "w", "c").to_env()
    assert ViewerSettings.from_env(env) == ViewerSettings("d", "p", "w", "c")
    assert ViewerSettings("d", None, "w", "c").pred_folders == ("w", "w")


def test_live_prediction_writes_row_and_heatmap(viewer_data, tiny_weights, tmp_path):
    src = open_data(viewer_data.pre)
    series = src.load(viewer_data.uids[0])
    steps: list[float] = []
    res = run_prediction(load_predictor(tiny_weights), series, tmp_path / "live", lambda f, t: steps.append(f))
    assert steps == sorted(steps) and steps[-1] == 1.0
    assert any(0.4 < f <= 0.9 for f in steps)  # the sliding windows report as they run
    assert all(0.0 <= v <= 1.0 for v in res.probs.values()) and res.n_passes == 1
    ps = open_predictions(tmp_path / "live")
    assert ps.row(series.uid) == pytest.approx(res.probs)
    heat = ps.load_heatmap(series.uid, series.volume)
    assert heat.shape == series.volume.array.shape and heat.max() > 0
    shutil.rmtree(tmp_path / "live")


def test_live_prediction_runs_the_two_stage_pipeline_like_the_kernel(viewer_data, tiny_weights, tmp_path):
    import weights_helper

    run = tmp_path / "run"
    shutil.copytree(tiny_weights, run)
    weights_helper.add_region(run)
    series = open_data(viewer_data.pre).load(viewer_data.uids[0])
    predictor = load_predictor(run)
    res = run_prediction(predictor, series, tmp_path / "live")
    assert predictor.pipeline.locator is not None and all(0.0 <= v <= 1.0 for v in res.probs.values())
    heat = open_predictions(tmp_path / "live").load_heatmap(series.uid, series.volume)
    # The two-stage heatmap lives on the region crop grid; the viewer puts it back on the series grid.
    assert heat.shape == series.volume.array.shape and heat.max() > 0
