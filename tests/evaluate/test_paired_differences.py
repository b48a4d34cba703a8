"""Paired bootstrap of score differences: the pipelines report's test for "which pipeline wins"."""

from __future__ import annotations

import numpy as np

from rsna_aneurysm.constants import LABEL_COLS
from rsna_aneurysm.evaluate.metric import parts_from_arrays
from rsna_aneurysm.evaluate.report import paired_differences


def _labels(n: int, rng: np.random.Generator) -> np.ndarray:
    y = (rng.random((n, len(LABEL_COLS))) < 0.3).astype(float)
    y[:4] = 1.0  # every column holds both classes
    y[4:8] = 0.0
    return y


def test_a_real_gain_has_an_interval_above_zero_and_a_tie_sits_at_zero() -> None:
    rng = np.random.default_rng(0)
    y = _labels(200, rng)
    good = y + rng.normal(0, 0.5, y.shape)
    noise = rng.random(y.shape)
    out = paired_differences(y, {"ref": noise, "good": good, "same": noise.copy()}, "ref", n_boot=300)
    assert set(out) == {"good", "same"}
    g = out["good"]
    assert g["diff"] == parts_from_arrays(y, good).score - parts_from_arrays(y, noise).score
    assert g["ci"][0] > 0 and g["p_not_better"] == 0.0
    assert out["same"]["diff"] == 0.0 and out["same"]["ci"] == [0.0, 0.0]


def test_the_interval_is_paired_narrower_than_two_separate_intervals() -> None:
    rng = np.random.default_rng(1)
    y = _labels(80, rng)
    base = rng.random(y.shape)
    slightly = base + 0.05 * y  # the same predictions, nudged a little towards the truth
    d = paired_differences(y, {"base": base, "nudged": slightly}, "base", n_boot=300)["nudged"]
    assert d["diff"] > 0 and d["ci"][0] >= -0.02 and d["ci"][1] - d["ci"][0] < 0.1


def test_too_few_valid_resamples_give_no_interval() -> None:
    rng = np.random.default_rng(2)
    y = np.zeros((6, len(LABEL_COLS)))
    y[0] = 1.0  # one positive per column: most resamples lose it
    p = rng.random(y.shape)
    out = paired_differences(y, {"a": p, "b": rng.random(y.shape)}, "a", n_boot=120)  # ~63 % hold row 0
    assert out["b"]["ci"] is None and out["b"]["n_valid"] < 100
