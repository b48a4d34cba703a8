"""The leaderboard metric against hand-computed cases, and each of its errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rsna_aneurysm.constants import ANEURYSM_PRESENT, ID_COL, LABEL_COLS, LOCATION_COLS
from rsna_aneurysm.evaluate.metric import (
    ColumnCountError,
    NonFiniteValueError,
    NonNumericColumnError,
    RowIdError,
    SingleClassColumnError,
    partial_score,
    score,
    score_parts,
)

# Scores that give AUC 1.0 / 0.75 / 0.5 / 0.25 / 0.0 for labels [1, 1, 0, 0]:
TRUE = np.array([1, 1, 0, 0])
SCORES = {1.0: [0.9, 0.8, 0.2, 0.1], 0.75: [0.9, 0.3, 0.6, 0.1], 0.5: [0.5, 0.5, 0.5, 0.5],
          0.25: [0.6, 0.1, 0.9, 0.3], 0.0: [0.1, 0.2, 0.8, 0.9]}


def _frames(aucs: list[float], ids: list[str] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Solution and submission where column j has AUC aucs[j] (all columns share the labels [1, 1, 0, 0])."""
    ids = ids or ["a", "b", "c", "d"]
    sol = pl.DataFrame({ID_COL: ids, **{c: TRUE for c in LABEL_COLS}})
    sub = pl.DataFrame({ID_COL: ids, **{c: SCORES[a] for c, a in zip(LABEL_COLS, aucs)}})
    return sol, sub


def test_hand_computed_cases_check_the_sklearn_auc():
    for target in SCORES:
        sol, sub = _frames([target] * 14)
        assert score(sol, sub) == pytest.approx(target)


def test_weighting_is_half_aneurysm_present_half_location_mean():
    # Locations: ten at 1.0, three at 0.0 -> mean 10/13; Aneurysm Present at 0.5.
    aucs = [1.0] * 10 + [0.0] * 3 + [0.5]
    sol, sub = _frames(aucs)
    expected = (13 * 0.5 + 10 * 1.0) / 26  # weights 1 x 13 and 13, normalised
    assert score(sol, sub) == pytest.approx(expected)
    assert score(sol, sub) == pytest.approx(0.5 * 0.5 + 0.5 * 10 / 13)
    parts = score_parts(sol, sub)
    assert parts.aneurysm_auc == pytest.approx(0.5)
    assert parts.location_mean_auc == pytest.approx(10 / 13)
    assert parts.aucs[ANEURYSM_PRESENT] == pytest.approx(0.5)
    # Aneurysm Present alone moves the score 13 times as much as one location.
    only_ap = [0.5] * 13 + [1.0]
    only_loc = [1.0] + [0.5] * 13
    assert score(*_frames(only_ap)) - 0.5 == pytest.approx(13 * (score(*_frames(only_loc)) - 0.5))


def test_columns_are_matched_by_position_not_name():
    sol, sub = _frames([1.0] * 13 + [0.0])
    # Same data, columns renamed: nothing changes.
    renamed = sub.rename({c: f"col{i}" for i, c in enumerate(LABEL_COLS)})
    assert score(sol, renamed) == score(sol, sub)
    # Same names, order swapped: position wins, so the perfect column is now scored as Aneurysm Present.
    cols = list(LABEL_COLS)
    cols[0], cols[-1] = cols[-1], cols[0]
    swapped = sub.select(ID_COL, *cols)
    assert score(sol, sub) == pytest.approx(0.5 * 0.0 + 0.5 * 1.0)
    assert score(sol, swapped) == pytest.approx(0.5 * 1.0 + 0.5 * 12 / 13)


def test_rows_are_aligned_by_row_id():
    sol, sub = _frames([1.0] * 14)
    assert score(sol, sub.reverse()) == pytest.approx(1.0)


def test_different_labels_per_column():
    # Column-specific labels: a location whose positives are rows 0 and 3.
    sol, sub = _frames([1.0] * 14)
    sol = sol.with_columns(pl.Series(LOCATION_COLS[0], [1, 0, 0, 1]))
    sub = sub.with_columns(pl.Series(LOCATION_COLS[0], [0.4, 0.5, 0.1, 0.6]))  # 3 of 4 pairs right
    assert score_parts(sol, sub).aucs[LOCATION_COLS[0]] == pytest.approx(0.75)
    assert score(sol, sub) == pytest.approx(0.5 + 0.5 * (12 + 0.75) / 13)


def test_non_numeric_column_is_an_error_naming_it():
    sol, sub = _frames([1.0] * 14)
    sub = sub.with_columns(pl.col(LOCATION_COLS[3]).cast(pl.String))
    with pytest.raises(NonNumericColumnError, match=LOCATION_COLS[3]) as e:
        score(sol, sub)
    assert e.value.column == LOCATION_COLS[3]


def test_column_count_mismatch_is_an_error():
    sol, sub = _frames([1.0] * 14)
    with pytest.raises(ColumnCountError, match="13 columns"):
        score(sol, sub.drop(LOCATION_COLS[5]))
    with pytest.raises(ColumnCountError):
        score(sol, sub.with_columns(pl.lit(0.5).alias("extra")))


def test_single_class_column_is_an_error_naming_it_and_partial_score_skips_it():
    sol, sub = _frames([1.0] * 13 + [0.5])
    sol = sol.with_columns(pl.lit(0).alias(LOCATION_COLS[7]), pl.lit(1).alias(LOCATION_COLS[2]))
    with pytest.raises(SingleClassColumnError, match=LOCATION_COLS[7]) as e:
        score(sol, sub)
    assert e.value.columns == [LOCATION_COLS[2], LOCATION_COLS[7]]
    parts = partial_score(sol, sub)
    assert parts.partial and parts.single_class_columns == [LOCATION_COLS[2], LOCATION_COLS[7]]
    assert parts.aucs[LOCATION_COLS[7]] is None
    # The 11 remaining locations keep the locations' half: 0.5 * 0.5 + 0.5 * 1.0.
    assert parts.score == pytest.approx(0.75)
    assert "PARTIAL" in parts.label()
    # Without a single-class column partial_score equals the strict score and is not partial.
    full = partial_score(*_frames([0.75] * 14))
    assert not full.partial and full.score == pytest.approx(score(*_frames([0.75] * 14)))


def test_nan_and_row_id_problems_are_errors():
    sol, sub = _frames([1.0] * 14)
    bad = sub.with_columns(pl.Series(ANEURYSM_PRESENT, [0.1, None, 0.2, 0.3], dtype=pl.Float64))
    with pytest.raises(NonFiniteValueError, match=ANEURYSM_PRESENT):
        score(sol, bad)
    with pytest.raises(NonFiniteValueError):
        score(sol, sub.with_columns(pl.Series(ANEURYSM_PRESENT, [0.1, float("nan"), 0.2, 0.3])))
    with pytest.raises(RowIdError, match="differ"):
        score(sol, sub.with_columns(pl.Series(ID_COL, ["a", "b", "c", "x"])))
    with pytest.raises(RowIdError, match="row id column"):
        score(sol, sub.drop(ID_COL))
