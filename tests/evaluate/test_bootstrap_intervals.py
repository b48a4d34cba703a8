"""Bootstrap intervals hold their point estimate, and too few usable resamples say "not enough resamples"."""

from __future__ import annotations

import numpy as np
import pytest

from rsna_aneurysm.constants import ANEURYSM_PRESENT, LABEL_COLS, LOCATION_COLS
from rsna_aneurysm.evaluate.report import build_report, centred_percentile_interval, format_table

HALVES = ("score", "aneurysm_auc", "location_mean_auc")


def table(n: int, prevalence: np.ndarray, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 14)) < prevalence).astype(float)
    s = np.round(1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, y.shape)))), 2)
    return y, s


def assert_contains(report: dict) -> None:
    ci = report["ci"]
    for key in HALVES:
        lo, hi = ci[key]
        assert 0.0 <= lo <= report[key] <= hi <= 1.0, (key, lo, report[key], hi)
    for name in LABEL_COLS:
        lo, hi = ci["columns"][name]
        assert lo <= report["columns"][name]["auc"] <= hi, (name, lo, hi)


def test_the_demo_interval_that_missed_its_estimate_is_recentred_on_it():
    # Bootstrap values all below the estimate, as in the demo (0.9766 with [0.970, 0.975]).
    values = np.linspace(0.969, 0.976, 50)
    assert np.percentile(values, 97.5) < 0.9766
    lo, hi = centred_percentile_interval(values, 0.9766)
    assert lo < 0.9766 < hi
    assert hi - lo == pytest.approx(np.percentile(values, 97.5) - np.percentile(values, 2.5))  # width kept
    assert centred_percentile_interval(np.full(10, 0.8), 1.0) == [1.0, 1.0]  # clipped, still holding it
    assert centred_percentile_interval(np.array([0.1, 0.3, 0.3]), 0.3)[0] <= 0.3  # exact in floating point


def test_a_normal_table_gets_intervals_holding_every_estimate():
    y, s = table(400, np.r_[np.full(13, 0.15), 0.45], 0.5, seed=0)
    report = build_report(y, s, n_boot=300, seed=0)
    ci = report["ci"]
    assert ci["n_valid"] >= 290 and ci["valid"]["score"] == ci["n_valid"]
    assert_contains(report)
    text = format_table(report)
    assert "not enough resamples" not in text.split("\n  95%")[0] and "re-centred" in text


@pytest.mark.parametrize("seed", range(8))
def test_intervals_hold_the_estimate_on_small_skewed_tables(seed: int):
    # 60 series, a strong model (AUCs near 1, skewed bootstrap), rare locations: the case where a percentile
    # interval from the few resamples holding every class drifts off the estimate.
    y, s = table(60, np.r_[np.full(13, 0.12), 0.45], 2.0, seed=seed)
    for j in range(14):  # every column holds both classes
        y[j, j], y[20 + j, j] = 1.0, 0.0
    report = build_report(y, s, n_boot=400, seed=seed, min_valid=1)
    ci = report["ci"]
    for key in HALVES:
        if ci[key] is not None:
            lo, hi = ci[key]
            assert lo <= report[key] <= hi, (key, lo, report[key], hi)
    for name in LABEL_COLS:
        lo, hi = ci["columns"][name]
        assert lo <= report["columns"][name]["auc"] <= hi, name


def test_too_few_valid_resamples_say_not_enough_resamples():
    # 30 series, each location positive in exactly one series: a resample keeps all 13 about 0.3 % of the time.
    y = np.zeros((30, 14))
    for j in range(len(LOCATION_COLS)):
        y[j, j] = 1.0
    y[:, 13] = (np.arange(30) % 2 == 0)
    s = np.clip(y * 0.3 + np.random.default_rng(0).random((30, 14)) * 0.7, 0, 1)
    report = build_report(y, s, n_boot=200, seed=0)
    ci = report["ci"]
    assert ci["n_valid"] < 100 and ci["score"] is None and ci["location_mean_auc"] is None
    assert ci["valid"]["score"] == ci["n_valid"] and ci["min_valid"] == 100
    # Each column alone is measured by ~63 % of the resamples (its one positive drawn): enough for its interval.
    for name in LABEL_COLS:
        assert ci["valid"]["columns"][name] >= 100, name
        lo, hi = ci["columns"][name]
        assert lo <= report["columns"][name]["auc"] <= hi
    lo, hi = ci["aneurysm_auc"]
    assert lo <= report["aneurysm_auc"] <= hi and ci["aneurysm_auc"] == ci["columns"][ANEURYSM_PRESENT]
    lines = format_table(report).splitlines()
    score_line = next(line for line in lines if line.startswith("SCORE"))
    assert f"not enough resamples ({ci['n_valid']} of 200)" in score_line
    assert "not enough resamples" in next(line for line in lines if line.startswith("mean location AUC"))
    assert "not enough resamples" not in next(line for line in lines if line.startswith(LOCATION_COLS[0]))
    # Fewer resamples than the minimum: nothing is reported as an interval.
    few = build_report(y, s, n_boot=50, seed=0)["ci"]
    assert few["columns"][ANEURYSM_PRESENT] is None and few["valid"]["columns"][ANEURYSM_PRESENT] == 50
