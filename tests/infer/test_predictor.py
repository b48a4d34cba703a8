"""The submission predictor: gateway-valid rows on every synthetic geometry, fallback rows for broken series,
share-folder deletion, lazy loading, heatmaps, and the time budget under a simulated slow clock."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import weights_helper as _helper
from pydicom.uid import RLELossless

from rsna_aneurysm.constants import ID_COL, LABEL_COLS
from rsna_aneurysm.data.synth import SeriesSpec, make_series
from rsna_aneurysm.infer.budget import BudgetConfig
from rsna_aneurysm.infer.gateway import check_prediction, run_gateway
from rsna_aneurysm.infer.predictor import Predictor, PredictorConfig, WeightsError, find_checkpoints

make_weights = _helper.make_weights

# Every modality, plane and DICOM quirk of the synthetic generator.
GEOMETRIES = {
    "cta-axial": SeriesSpec(modality="CTA", plane="axial"),
    "mra-coronal": SeriesSpec(modality="MRA", plane="coronal"),
    "t2-sagittal": SeriesSpec(modality="MRI T2", plane="sagittal"),
    "t1post-axial-tilted": SeriesSpec(modality="MRI T1post", plane="axial", tilt=True),
    "multiframe": SeriesSpec(modality="CTA", multiframe=True, shuffle_instance_numbers=True),
    "multiframe-no-geometry": SeriesSpec(modality="MRA", multiframe=True, multiframe_no_geometry=True),
    "reversed-shuffled": SeriesSpec(modality="MRI T2", reversed=True, shuffle_instance_numbers=True),
    "odd-slice": SeriesSpec(modality="CTA", plane="coronal", odd_slice=True),
    "rle-monochrome1": SeriesSpec(modality="MRA", transfer_syntax=RLELossless, monochrome1=True),
}


def _test_layout(root: Path, specs: dict[str, SeriesSpec]) -> Path:
    uids = []
    for n, spec in enumerate(specs.values()):
        uid = f"1.2.826.0.1.9999.{n}"
        spec = SeriesSpec(**{**spec.__dict__, "preset": "tiny", "test_tags_only": True, "seed": n})
        make_series(root / "series" / uid, spec, series_uid=uid, keep_volume=False)
        uids.append(uid)
    pl.DataFrame({ID_COL: uids}).write_csv(root / "test.csv")
    return root


def _predictor(run: Path, share: Path, **changes) -> Predictor:
    cfg = PredictorConfig(share_root=str(share), tta_flip=False, use_budget=False)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return Predictor.from_weights(run, cfg)


def test_rows_pass_the_gateway_on_every_modality_and_geometry(tmp_path: Path) -> None:
    run = make_weights(tmp_path / "run", folds=(0,))
    test = _test_layout(tmp_path / "test", GEOMETRIES)
    share = tmp_path / "share"
    predictor = _predictor(run, share, tta_flip=True, use_budget=True)
    result = run_gateway(predictor.predict, test, share_root=share, seed=0, out_path=tmp_path / "sub.parquet")
    assert result.ok, result.summary()
    assert predictor.n_fallback == 0, predictor.fallback_reasons  # every geometry went through the model
    assert predictor.n_predicted == len(GEOMETRIES)
    assert not any(c.left_share for c in result.calls)  # the predictor deleted the share folder itself
    sub = pl.read_parquet(tmp_path / "sub.parquet")
    assert sub.columns == [ID_COL, *LABEL_COLS] and sub.height == len(GEOMETRIES)
    # Untrained models still give per-series answers, not one constant row.
    assert sub.select(LABEL_COLS).unique().height > 1
    rec = predictor.records[0]
    assert rec["level"] == "tta-1fold" and rec["passes"] == 2
    assert all(rec[k] >= 0 for k in ("read_s", "preprocess_s", "model_s", "aggregate_s"))


def _broken_series(root: Path) -> dict[str, Path]:
    good = root / "good"
    make_series(good, SeriesSpec(preset="tiny", test_tags_only=True), series_uid="1.2.3.4", keep_volume=False)
    files = sorted(good.glob("*.dcm"))
    cases = {name: root / name for name in ("empty", "garbage", "one-slice", "truncated")}
    for path in cases.values():
        path.mkdir()
    (cases["garbage"] / "x.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    shutil.copy(files[0], cases["one-slice"])
    for f in files:
        data = f.read_bytes()
        (cases["truncated"] / f.name).write_bytes(data[: len(data) - 200] if f == files[len(files) // 2] else data)
    cases["missing-folder"] = root / "does-not-exist"
    return cases


def test_broken_series_get_the_fallback_row_and_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = make_weights(tmp_path / "run")
    prevalence = json.loads((run / "prevalence.json").read_text())
    cases = _broken_series(tmp_path / "series")
    truncated = cases.pop("truncated")  # one bad slice inside the stack: filled from its neighbours, not fatal
    predictor = _predictor(run, tmp_path / "share")
    caplog.set_level(logging.WARNING, logger="rsna_aneurysm.infer.predictor")
    for n, (name, path) in enumerate(cases.items(), start=1):
        (tmp_path / "share" / "x").mkdir(parents=True, exist_ok=True)
        row = predictor.predict(str(path))  # never raises
        values, problems = check_prediction(row, name)
        assert not problems, (name, problems)
        assert values == pytest.approx([prevalence[c] for c in LABEL_COLS]), name
        assert predictor.n_fallback == n
        assert any(path.name in r.getMessage() and "fallback row" in r.getMessage() for r in caplog.records), name
        assert not (tmp_path / "share").exists()  # deleted on the fallback path too
    reasons = dict(predictor.fallback_reasons)
    assert "need at least 2" in reasons["one-slice"]
    # The good series, and the one with a truncated slice, still go through the model afterwards.
    predictor.predict(str(tmp_path / "series" / "good"))
    predictor.predict(str(truncated))
    assert predictor.n_predicted == 2 and predictor.n_fallback == len(cases), predictor.fallback_reasons


def test_models_load_in_the_first_predict_and_a_bad_checkpoint_falls_back(tmp_path: Path) -> None:
    run = make_weights(tmp_path / "run", folds=(0, 1))
    predictor = _predictor(run, tmp_path / "share")
    assert predictor.pipeline.models is None  # building the predictor loads nothing heavy
    (run / "fold_1" / "best.pt").write_bytes(b"not a checkpoint")
    good = tmp_path / "s"
    make_series(good, SeriesSpec(preset="tiny", test_tags_only=True), series_uid="1.2.3", keep_volume=False)
    for _ in range(2):
        row = predictor.predict(str(good))
        assert check_prediction(row, "s")[1] == []
    assert predictor.n_fallback == 2 and "could not be loaded" in predictor.fallback_reasons[0][1]
    assert predictor.pipeline.models is None and predictor.load_error


def test_weights_folder_layouts_settings_and_errors(tmp_path: Path) -> None:
    run = make_weights(tmp_path / "run", folds=(0, 2))
    assert list(find_checkpoints(run)) == [0, 2]
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(run / "fold_2" / "best.pt", flat / "fold_2.pt")  # the packaged weights dataset's layout
    (flat / "predictor.json").write_text(json.dumps({"tta_flip": False, "aggregate": {"method": "topk_mean"}}))
    p = Predictor.from_weights(flat, overrides={"share_root": str(tmp_path / "share")})
    assert list(p.checkpoints) == [2] and p.cfg.tta_flip is False and p.cfg.aggregate.method == "topk_mean"
    assert p.fallback_values == [0.5] * 14  # no prevalence.json: 0.5, with a warning
    with pytest.raises(WeightsError, match="fold"):
        Predictor.from_weights(run, PredictorConfig(folds=[1]))
    with pytest.raises(WeightsError, match="no fold_"):
        Predictor.from_weights(tmp_path / "share")


def test_heatmaps_are_written_as_nifti(tmp_path: Path) -> None:
    from rsna_aneurysm.io.nifti import read_volume

    run = make_weights(tmp_path / "run")
    series = tmp_path / "s"
    make_series(series, SeriesSpec(preset="tiny", test_tags_only=True), series_uid="1.2.3.7", keep_volume=False)
    predictor = _predictor(run, tmp_path / "share", heatmap_dir=str(tmp_path / "heat"))
    predictor.predict(str(series))
    heat = read_volume(tmp_path / "heat" / "1.2.3.7.nii.gz")
    assert list(heat.array.shape) == predictor.records[0]["shape_kji"]
    assert 0.0 <= float(heat.array.min()) and float(heat.array.max()) <= 1.0
    assert heat.spacing == pytest.approx((4.0, 4.0, 4.0))


class SlowClock:
    """Simulated time: only model work costs, 50 s per window, so coarser levels are really cheaper."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_budget_steps_down_then_falls_back_under_a_slow_clock(tmp_path: Path) -> None:
    run = make_weights(tmp_path / "run", folds=(0, 1), patch=32)
    specs = {f"s{n}": SeriesSpec(modality="CTA") for n in range(6)}
    test = _test_layout(tmp_path / "test", specs)
    clock = SlowClock()
    budget = BudgetConfig(total_seconds=1e6, expected_series=6, series_margin=0.0, safety_seconds=0.0,
                          fallback_seconds=0.0, spacing_steps=(2.0,))
    cfg = PredictorConfig(share_root=str(tmp_path / "share"), tta_flip=True, budget=budget)
    predictor = Predictor.from_weights(run, cfg, clock=clock)
    predictor.load()
    real = predictor.pipeline.inferer

    def slow_inferer(model, array, mask=None, on_batch=None):
        res = real(model, array, mask=mask, on_batch=on_batch)
        clock.t += 50.0 * len(res.window_starts)
        return res

    predictor.pipeline.inferer = slow_inferer
    uids = pl.read_csv(test / "test.csv")[ID_COL].to_list()
    assert check_prediction(predictor.predict(str(test / "series" / uids[0])), uids[0])[1] == []
    # Now leave time for about 2.5 of the cheapest series for the 5 still expected.
    cheapest = predictor.levels[-1]
    budget.total_seconds = clock.t + 2.5 * predictor.planner.estimate(cheapest) / (1 + budget.estimate_margin)
    for uid in uids[1:]:
        row = predictor.predict(str(test / "series" / uid))
        assert check_prediction(row, uid)[1] == []
    levels = [r["level"] for r in predictor.records]
    assert levels[0] == "tta-2folds"
    assert set(levels[1:]) == {cheapest.name}  # stepped down...
    assert predictor.n_predicted >= 3 and predictor.n_fallback >= 1  # ...ran it while it fitted, then fell back
    assert all(reason == "time budget exhausted" for _, reason in predictor.fallback_reasons)
    assert predictor.planner.elapsed <= budget.total_seconds
    assert predictor.n_predicted + predictor.n_fallback == 6


def test_predict_command_prints_rows_timing_and_decisions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rsna_aneurysm.cli import main

    run = make_weights(tmp_path / "run")
    (run / "thresholds.json").write_text(json.dumps({c: 0.5 for c in LABEL_COLS}))
    series = tmp_path / "s"
    make_series(series, SeriesSpec(preset="tiny", test_tags_only=True), series_uid="1.2.3.9", keep_volume=False)
    assert main(["predict", "--weights", str(run), str(series), "--compact", "--tta_flip", "false"]) == 0
    out = capsys.readouterr().out
    row = json.loads(out.splitlines()[0])
    assert list(row)[1:15] == list(LABEL_COLS) and set(row["decisions"].values()) <= {0, 1}
    assert {"read_s", "preprocess_s", "model_s", "aggregate_s", "total_s"} <= set(row["timing_s"])
    assert main(["predict", "--weights", str(run), str(tmp_path / "missing"), "--compact"]) == 1
    assert "fallback" in capsys.readouterr().out


def test_a_series_past_its_time_limit_becomes_a_counted_fallback_row(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    run = make_weights(tmp_path / "run", patch=16)
    prevalence = json.loads((run / "prevalence.json").read_text())
    series = tmp_path / "s"
    make_series(series, SeriesSpec(preset="tiny", test_tags_only=True), series_uid="1.2.3.11", keep_volume=False)
    clock = SlowClock()
    cfg = PredictorConfig(share_root=str(tmp_path / "share"), tta_flip=False, use_budget=False,
                          budget=BudgetConfig(max_series_seconds=120.0))
    cfg.window.batch_size = 1  # one window per forward pass: a deadline check after each
    predictor = Predictor.from_weights(run, cfg, clock=clock)
    predictor.load()
    real = predictor.pipeline.inferer
    batches: list[int] = []

    def slow_inferer(model, array, mask=None, on_batch=None):
        def tick(n: int) -> None:  # every window costs 50 simulated seconds
            batches.append(n)
            clock.t += 50.0 * n
            if on_batch is not None:
                on_batch(n)

        return real(model, array, mask=mask, on_batch=tick)

    predictor.pipeline.inferer = slow_inferer
    caplog.set_level(logging.WARNING, logger="rsna_aneurysm.infer.predictor")
    row = predictor.predict(str(series))
    values, problems = check_prediction(row, "s")
    assert not problems and values == pytest.approx([prevalence[c] for c in LABEL_COLS])
    assert predictor.n_timeouts == 1 and predictor.n_fallback == 1 and predictor.n_predicted == 0
    assert "time limit 120.0 s" in predictor.fallback_reasons[0][1]
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("s: fallback row") and "SeriesTimeout" in m for m in msgs)
    assert len(batches) == 3 and clock.t == pytest.approx(150.0)  # cut after the third window, not run to the end
    assert predictor.summary()["timeouts"] == 1
    # With a limit the series fits in, the same series goes through the model.
    predictor.cfg.budget.max_series_seconds = 1e9
    batches.clear()
    predictor.predict(str(series))
    assert predictor.n_predicted == 1 and len(batches) > 3


def test_budget_planner_learns_from_a_timeout(tmp_path: Path) -> None:
    run = make_weights(tmp_path / "run", patch=16)
    series = tmp_path / "s"
    make_series(series, SeriesSpec(preset="tiny", test_tags_only=True), series_uid="1.2.3.12", keep_volume=False)
    clock = SlowClock()
    budget = BudgetConfig(total_seconds=1e6, expected_series=10, safety_seconds=0.0, max_series_seconds=30.0)
    cfg = PredictorConfig(share_root=str(tmp_path / "share"), tta_flip=False, budget=budget)
    predictor = Predictor.from_weights(run, cfg, clock=clock)
    predictor.load()
    real = predictor.pipeline.inferer

    def slow_inferer(model, array, mask=None, on_batch=None):
        def tick(n: int) -> None:
            clock.t += 20.0 * n
            on_batch(n)

        return real(model, array, mask=mask, on_batch=tick)

    predictor.pipeline.inferer = slow_inferer
    predictor.predict(str(series))
    assert predictor.n_timeouts == 1 and predictor.planner.n_timeouts == 1 and predictor.planner.n_done == 1
    assert predictor.planner.estimate(predictor.levels[0]) >= 30.0  # the overrun is what it learnt


@pytest.mark.parametrize("broken", ["finder", "finder-and-config"])
def test_corrupt_stage_one_uses_the_fallback_region_not_fallback_rows(tmp_path: Path, broken: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    run = _helper.add_region(make_weights(tmp_path / "run", patch=16))
    (run / "region" / "finder.pt").write_bytes(b"not a checkpoint")
    if broken == "finder-and-config":
        (run / "region" / "region.json").write_text("{not json")
    test = _test_layout(tmp_path / "test", {k: GEOMETRIES[k] for k in ("cta-axial", "mra-coronal")})
    predictor = _predictor(run, tmp_path / "share")
    assert predictor.two_stage
    caplog.set_level(logging.ERROR, logger="rsna_aneurysm.infer.pipeline")
    result = run_gateway(predictor.predict, test, share_root=tmp_path / "share", seed=0, out_path=None)
    assert result.ok, result.summary()
    assert predictor.n_fallback == 0 and predictor.n_predicted == 2, predictor.fallback_reasons
    assert {r["region_source"] for r in predictor.records} == {"fallback"}
    assert any("stage one could not be loaded" in r.getMessage() for r in caplog.records)
    summary = predictor.summary()
    assert summary["region_fallbacks"] == 2 and "region_error" in summary
    if broken == "finder-and-config":
        from rsna_aneurysm.region.finder import RegionConfig

        assert predictor.pipeline.locator.cfg == RegionConfig()
