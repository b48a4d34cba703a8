"""The leaderboard metric: mean weighted column-wise ROC AUC, with the leaderboard's errors.

``score`` is the strict, leaderboard-equivalent function: the row-id column is dropped, the remaining columns are
matched by position (never by name), a non-numeric submission column, a column-count mismatch or a solution column
holding a single class is an error (no column is skipped). Weights are 1 for each location and 13 for Aneurysm
Present, normalised to sum 1, so the score is half the Aneurysm-Present AUC plus half the mean location AUC.

``partial_score`` is the same computation over the columns that have both classes, for small local test sets; it
is never leaderboard-comparable and says which columns it left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score

from ..constants import ID_COL, LABEL_COLS, METRIC_WEIGHTS

# Position of Aneurysm Present among the scored columns (the last one).
AP_INDEX = len(LABEL_COLS) - 1


class MetricError(ValueError):
    """The submission or solution cannot be scored (the leaderboard would reject it too)."""


class ColumnCountError(MetricError):
    """Submission and solution have a different number of columns after the row id is dropped."""


class NonNumericColumnError(MetricError):
    """A submission (or solution) column is not numeric; ``column`` names it."""

    def __init__(self, column: str, dtype: Any, side: str = "submission") -> None:
        self.column = column
        super().__init__(f"{side} column {column!r} must be numeric, got dtype {dtype}")


class NonFiniteValueError(MetricError):
    """A submission column holds null, NaN or infinite values (roc_auc_score rejects them)."""

    def __init__(self, column: str, n_bad: int) -> None:
        self.column = column
        super().__init__(f"submission column {column!r} holds {n_bad} null/NaN/infinite value(s)")


class SingleClassColumnError(MetricError):
    """A solution column holds a single class, so its AUC (and the whole score) is undefined."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = list(columns)
        super().__init__(f"solution column(s) {self.columns} hold a single class: ROC AUC is undefined, so the "
                         "score is undefined (the leaderboard errors; no column is skipped)")


class RowIdError(MetricError):
    """The row ids of submission and solution differ or repeat."""


@dataclass
class ScoreParts:
    """A score with its pieces: AUC per column (None where undefined) and the two halves."""

    score: float
    aucs: dict[str, float | None]
    aneurysm_auc: float | None
    location_mean_auc: float | None
    partial: bool = False
    single_class_columns: list[str] = field(default_factory=list)

    def label(self) -> str:
        """'score' or a clearly marked partial score."""
        if not self.partial:
            return "score"
        n = sum(a is not None for a in self.aucs.values())
        return f"PARTIAL score over {n} of {len(self.aucs)} columns (not leaderboard-comparable)"


def _to_polars(df: Any, name: str) -> pl.DataFrame:
    if isinstance(df, pl.DataFrame):
        return df
    if type(df).__module__.startswith("pandas"):
        return pl.from_pandas(df)
    raise MetricError(f"{name} must be a polars (or pandas) DataFrame, got {type(df).__name__}")


def _is_numeric(dtype: pl.DataType) -> bool:
    # pandas (which the leaderboard uses) counts booleans as numeric.
    return dtype.is_numeric() or dtype == pl.Boolean


def prepare(solution: Any, submission: Any, row_id_column_name: str = ID_COL
            ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Validate as the leaderboard does and return (solution column names, y_true, y_score) aligned by row id.

    Every check of ``score`` except the single-class one.
    """
    sol = _to_polars(solution, "solution")
    sub = _to_polars(submission, "submission")
    for df, side in ((sol, "solution"), (sub, "submission")):
        if row_id_column_name not in df.columns:
            raise RowIdError(f"{side} has no row id column {row_id_column_name!r} (columns: {df.columns})")
        if df[row_id_column_name].is_duplicated().any():
            raise RowIdError(f"{side} repeats row ids in {row_id_column_name!r}")
    sol_ids = set(sol[row_id_column_name].to_list())
    sub_ids = set(sub[row_id_column_name].to_list())
    if sol_ids != sub_ids:
        missing, extra = sorted(map(str, sol_ids - sub_ids)), sorted(map(str, sub_ids - sol_ids))
        raise RowIdError(f"submission row ids differ from the solution's: {len(missing)} missing "
                         f"{missing[:20]}, {len(extra)} unexpected {extra[:20]}")
    # The leaderboard aligns rows by id before scoring; columns stay positional.
    order = sol.select(row_id_column_name).with_row_index("__row")
    sub = order.join(sub, on=row_id_column_name, how="left").sort("__row").drop("__row")
    sol = sol.drop(row_id_column_name)
    sub = sub.drop(row_id_column_name)
    for col, dtype in sub.schema.items():
        if not _is_numeric(dtype):
            raise NonNumericColumnError(col, dtype, "submission")
    if sol.width != sub.width:
        raise ColumnCountError(f"submission has {sub.width} columns besides {row_id_column_name!r}, the solution "
                               f"has {sol.width}")
    if sol.width != len(METRIC_WEIGHTS):
        raise ColumnCountError(f"the metric scores {len(METRIC_WEIGHTS)} columns; the solution has {sol.width}")
    for col, dtype in sol.schema.items():
        if not _is_numeric(dtype):
            raise NonNumericColumnError(col, dtype, "solution")
    y_true = sol.select(pl.all().cast(pl.Float64)).to_numpy()
    y_score = sub.select(pl.all().cast(pl.Float64)).to_numpy()
    for j, col in enumerate(sub.columns):
        bad = int((~np.isfinite(y_score[:, j])).sum())
        if bad:
            raise NonFiniteValueError(col, bad)
    if not np.isfinite(y_true).all():
        raise MetricError("solution holds null/NaN values")
    return sol.columns, y_true, y_score


def column_aucs(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """ROC AUC of each column (sklearn's), NaN where the column of ``y_true`` holds a single class."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    out = np.full(y_true.shape[1], np.nan)
    for j in range(y_true.shape[1]):
        if np.unique(y_true[:, j]).size == 2:
            out[j] = roc_auc_score(y_true[:, j], y_score[:, j])
        elif np.unique(y_true[:, j]).size > 2:
            raise MetricError(f"solution column {j} is not binary: values {np.unique(y_true[:, j])[:5]}")
    return out


def combine(aucs: np.ndarray, weights: tuple[float, ...] = METRIC_WEIGHTS) -> tuple[float, float | None, float | None]:
    """(score, Aneurysm-Present AUC, mean location AUC) from per-column AUCs; NaN columns are left out.

    With every column defined this is exactly ``np.average(aucs, weights=weights)``. With some left out, the
    locations that remain share the locations' half equally (the partial score), so the two halves keep their
    weight and a partial score estimates the full one.
    """
    aucs = np.asarray(aucs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    ok = ~np.isnan(aucs)
    if not ok.any():
        return float("nan"), None, None
    if ok.all():
        score = float(np.average(aucs, weights=w))
    else:
        w = w.copy()
        loc_ok = ok[:AP_INDEX]
        if loc_ok.any():
            w[:AP_INDEX] = np.where(loc_ok, w[:AP_INDEX].sum() / loc_ok.sum(), 0.0)
        score = float(np.average(aucs[ok], weights=w[ok]))
    ap = float(aucs[AP_INDEX]) if ok[AP_INDEX] else None
    loc = float(np.mean(aucs[:AP_INDEX][ok[:AP_INDEX]])) if ok[:AP_INDEX].any() else None
    return score, ap, loc


def score(solution: Any, submission: Any, row_id_column_name: str = ID_COL) -> float:
    """The leaderboard score; raises a MetricError subclass wherever the leaderboard errors."""
    return score_parts(solution, submission, row_id_column_name).score


def score_parts(solution: Any, submission: Any, row_id_column_name: str = ID_COL) -> ScoreParts:
    """The strict score with its per-column AUCs and halves."""
    names, y_true, y_score = prepare(solution, submission, row_id_column_name)
    aucs = column_aucs(y_true, y_score)
    single = [names[j] for j in np.flatnonzero(np.isnan(aucs))]
    if single:
        raise SingleClassColumnError(single)
    total, ap, loc = combine(aucs)
    return ScoreParts(total, dict(zip(names, map(float, aucs))), ap, loc)


def partial_score(solution: Any, submission: Any, row_id_column_name: str = ID_COL) -> ScoreParts:
    """Like ``score_parts`` but single-class columns are left out (and listed) instead of raising.

    ``partial`` is True when a column was left out; every other leaderboard error still raises.
    """
    names, y_true, y_score = prepare(solution, submission, row_id_column_name)
    return parts_from_arrays(y_true, y_score, names)


def parts_from_arrays(y_true: np.ndarray, y_score: np.ndarray, names: list[str] | tuple[str, ...] = LABEL_COLS
                      ) -> ScoreParts:
    """ScoreParts from aligned (n, 14) arrays, leaving single-class columns out (partial) rather than raising."""
    aucs = column_aucs(y_true, y_score)
    single = [names[j] for j in np.flatnonzero(np.isnan(aucs))]
    total, ap, loc = combine(aucs)
    return ScoreParts(total, {n: (None if np.isnan(a) else float(a)) for n, a in zip(names, aucs)}, ap, loc,
                      partial=bool(single), single_class_columns=single)
