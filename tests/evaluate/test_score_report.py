"""Score report: bootstrap AUC equals sklearn's, report numbers equal the strict metric, files are written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from rsna_aneurysm.constants import ANEURYSM_PRESENT, ID_COL, LABEL_COLS, LOCATION_COLS, MODALITIES
from rsna_aneurysm.evaluate.metric import score_parts
from rsna_aneurysm.evaluate.report import (
    bootstrap_counts,
    build_report,
    format_table,
    weighted_auc,
    write_report,
)


def synthetic(n: int = 400, seed: int = 0, signal: float = 0.5) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 14)) < np.r_[np.full(13, 0.15), 0.45]).astype(float)
    s = np.round(1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, y.shape)))), 2)  # rounded: ties
    return y, s, list(rng.choice(MODALITIES, n))


def test_weighted_auc_matches_sklearn_with_ties_and_resampling():
    y, s, _ = synthetic()
    for j in range(14):
        ours = weighted_auc(y[:, j], s[:, j], np.ones((1, len(y))))[0]
        assert ours == pytest.approx(roc_auc_score(y[:, j], s[:, j]), abs=1e-12)
    rng = np.random.default_rng(1)
    counts = bootstrap_counts(len(y), 5, rng)
    assert counts.sum(1).tolist() == [len(y)] * 5
    aucs = weighted_auc(y[:, 13], s[:, 13], counts)
    for b in range(5):
        idx = np.repeat(np.arange(len(y)), counts[b].astype(int))
        assert aucs[b] == pytest.approx(roc_auc_score(y[idx, 13], s[idx, 13]), abs=1e-12)
    assert np.isnan(weighted_auc(np.zeros(4), np.arange(4.0), np.ones((1, 4))))[0]


def test_report_numbers_equal_the_strict_metric_and_intervals_hold_them():
    y, s, mod = synthetic()
    report = build_report(y, s, modality=mod, fold=[i % 3 for i in range(len(y))], n_boot=300, seed=0)
    ids = [str(i) for i in range(len(y))]
    parts = score_parts(pl.DataFrame({ID_COL: ids, **{c: y[:, j] for j, c in enumerate(LABEL_COLS)}}),
                        pl.DataFrame({ID_COL: ids, **{c: s[:, j] for j, c in enumerate(LABEL_COLS)}}))
    assert report["score"] == pytest.approx(parts.score)
    assert report["aneurysm_auc"] == pytest.approx(parts.aneurysm_auc)
    assert report["location_mean_auc"] == pytest.approx(parts.location_mean_auc)
    assert report["score"] == pytest.approx(0.5 * report["aneurysm_auc"] + 0.5 * report["location_mean_auc"])
    assert report["columns"][ANEURYSM_PRESENT]["positives"] == int(y[:, 13].sum())
    assert not report["partial"]
    ci = report["ci"]
    assert ci["n_valid"] >= 290
    for key in ("score", "aneurysm_auc", "location_mean_auc"):
        lo, hi = ci[key]
        assert lo < report[key] < hi and hi - lo < 0.2
    assert set(report["by_modality"]) == set(mod) and set(report["by_fold"]) == {"0", "1", "2"}
    cta = np.array(mod) == "CTA"
    assert report["by_modality"]["CTA"]["n_series"] == int(cta.sum())
    assert report["by_modality"]["CTA"]["aneurysm_auc"] == pytest.approx(roc_auc_score(y[cta, 13], s[cta, 13]))
    # A better model gets a higher score.
    y2, s2, _ = synthetic(signal=3.0)
    assert build_report(y2, s2, n_boot=0)["score"] > report["score"] + 0.1


def test_partial_report_is_labelled_and_lists_single_class_columns(tmp_path: Path):
    y, s, mod = synthetic(60)
    y[:, 7] = 0  # Left ACA: no positive
    report = build_report(y, s, modality=mod, n_boot=50)
    assert report["partial"] and report["single_class_columns"] == [LOCATION_COLS[7]]
    assert report["columns"][LOCATION_COLS[7]]["auc"] is None
    table = format_table(report)
    assert "PARTIAL SCORE" in table and LOCATION_COLS[7] in table and "single class: not scored" in table
    paths = write_report(report, y, s, tmp_path / "rep")
    assert json.loads(paths["report"].read_text())["columns"][LOCATION_COLS[7]]["auc"] is None
    for key in ("roc_curves", "by_modality"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[key].stat().st_size > 10_000


def test_bootstrap_is_fast_on_a_full_size_table():
    import time

    y, s, _ = synthetic(4348)
    t0 = time.perf_counter()
    report = build_report(y, s, n_boot=1000)
    assert report["ci"]["n_valid"] == 1000
    assert time.perf_counter() - t0 < 20  # about 1-2 s on a 2-core CPU
