"""F2-maximising thresholds: a hand case, a brute-force check, the file round trip and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import fbeta_score

from rsna_aneurysm.constants import LABEL_COLS
from rsna_aneurysm.evaluate.thresholds import (
    DEFAULT_THRESHOLD,
    ThresholdFileError,
    best_fbeta_threshold,
    calibrate_thresholds,
    load_thresholds,
    save_thresholds,
)


def test_hand_computed_f2():
    y = np.array([1, 1, 0, 0, 1])
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    # t=0.8: tp 2, fp 0, fn 1 -> F2 = 10/14; t=0.1: tp 3, fp 2, fn 0 -> F2 = 15/17 (the best).
    best = best_fbeta_threshold(y, s)
    assert best["threshold"] == pytest.approx(0.1)
    assert best["fbeta"] == pytest.approx(15 / 17)
    assert best["recall"] == 1.0 and best["precision"] == pytest.approx(0.6)
    # F1 weighs precision more: it prefers t=0.8 (F1 0.8) over t=0.1 (F1 0.75).
    assert best_fbeta_threshold(y, s, beta=1.0)["threshold"] == pytest.approx(0.8)


def test_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = (rng.random(200) < 0.2).astype(int)
        s = np.round(rng.random(200) * 0.5 + 0.4 * y, 1)  # coarse: many ties
        best = best_fbeta_threshold(y, s)
        brute = {t: fbeta_score(y, (s >= t).astype(int), beta=2.0) for t in np.unique(s)}
        top = max(brute.values())
        assert best["fbeta"] == pytest.approx(top)
        assert best["threshold"] == max(t for t, f in brute.items() if np.isclose(f, top))


def test_no_positive_gives_the_default_and_a_note():
    best = best_fbeta_threshold(np.zeros(5), np.linspace(0, 1, 5))
    assert best["threshold"] == DEFAULT_THRESHOLD and best["fbeta"] is None and "no positive" in best["note"]


def test_calibrate_save_load_round_trip(tmp_path: Path):
    rng = np.random.default_rng(1)
    y = (rng.random((100, 14)) < 0.3).astype(float)
    s = np.clip(y * 0.5 + rng.random((100, 14)) * 0.5, 0, 1)
    thr = calibrate_thresholds(y, s)
    assert list(thr) == list(LABEL_COLS)
    path = save_thresholds(thr, tmp_path / "thresholds.json")
    loaded = load_thresholds(path)
    assert list(loaded) == list(LABEL_COLS)
    assert all(loaded[c] == pytest.approx(thr[c]["threshold"]) for c in LABEL_COLS)
    assert json.loads(path.read_text()) == loaded


def test_bad_threshold_files(tmp_path: Path):
    p = tmp_path / "t.json"
    with pytest.raises(ThresholdFileError, match="does not exist"):
        load_thresholds(p)
    p.write_text("{not json")
    with pytest.raises(ThresholdFileError, match="not valid JSON"):
        load_thresholds(p)
    p.write_text(json.dumps({c: 0.5 for c in LABEL_COLS[:-1]}))
    with pytest.raises(ThresholdFileError, match="Aneurysm Present"):
        load_thresholds(p)
    p.write_text(json.dumps({**{c: 0.5 for c in LABEL_COLS}, LABEL_COLS[0]: 2.0}))
    with pytest.raises(ThresholdFileError, match="in \\[0, 1\\]"):
        load_thresholds(p)
    with pytest.raises(ThresholdFileError, match="no threshold"):
        save_thresholds({LABEL_COLS[0]: 0.5}, p)
