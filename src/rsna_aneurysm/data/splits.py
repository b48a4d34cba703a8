"""Cross-validation folds for training: read a folds table, or make a deterministic stratified split.

The folds command (``rsna-aneurysm folds``) writes a table with ``SeriesInstanceUID, fold``; when a run has none,
``make_folds`` splits the series it has, stratified by Aneurysm Present, from the sorted uids and a seed, so the
same series and seed always give the same folds on any machine.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from ..constants import ANEURYSM_PRESENT, ID_COL

log = logging.getLogger(__name__)


class FoldsError(ValueError):
    """A folds table is missing, unreadable or lacks the needed columns."""


def read_folds(path: str | Path) -> pl.DataFrame:
    """``SeriesInstanceUID, fold`` from a CSV or parquet table."""
    path = Path(path)
    if not path.exists():
        raise FoldsError(f"folds table {path} does not exist")
    try:
        df = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema_length=10000)
    except Exception as e:  # polars raises several types for unreadable files
        raise FoldsError(f"folds table {path} is not readable: {e}") from e
    missing = {ID_COL, "fold"} - set(df.columns)
    if missing:
        raise FoldsError(f"folds table {path} lacks column(s) {sorted(missing)}")
    return df.select(pl.col(ID_COL).cast(pl.Utf8), pl.col("fold").cast(pl.Int64))


def make_folds(uids: list[str], positive: list[int] | np.ndarray, n_folds: int = 5, seed: int = 42) -> pl.DataFrame:
    """Deterministic stratified split of ``uids`` into ``n_folds`` folds (positives and negatives dealt evenly)."""
    if n_folds < 2:
        raise FoldsError(f"n_folds must be at least 2, got {n_folds}")
    order = np.argsort(np.asarray(uids, dtype=object).astype(str), kind="stable")
    uids_sorted = [str(uids[i]) for i in order]
    pos = np.asarray(positive, dtype=np.int64)[order]
    rng = np.random.default_rng(seed)
    fold = np.empty(len(uids_sorted), dtype=np.int64)
    start = 0
    for cls in (1, 0):  # deal each class round-robin over a shuffled order, continuing the rotation
        idx = np.flatnonzero(pos == cls)
        idx = idx[rng.permutation(len(idx))]
        fold[idx] = (start + np.arange(len(idx))) % n_folds
        start = (start + len(idx)) % n_folds
    return pl.DataFrame({ID_COL: uids_sorted, "fold": fold})


def resolve_folds(series: pl.DataFrame, folds_path: str | Path | None, n_folds: int = 5, seed: int = 42
                  ) -> pl.DataFrame:
    """Fold of every series in ``series`` (needs ``SeriesInstanceUID``; ``Aneurysm Present`` if present).

    From ``folds_path`` when given (series it lacks get fold -1 and a warning), else ``make_folds``.
    """
    uids = series[ID_COL].cast(pl.Utf8).to_list()
    if folds_path:
        table = read_folds(folds_path)
        out = pl.DataFrame({ID_COL: uids}).join(table, on=ID_COL, how="left").with_columns(
            pl.col("fold").fill_null(-1))
        n_missing = int((out["fold"] == -1).sum())
        if n_missing:
            log.warning("folds table %s lacks %d of %d series: they get fold -1 (used for neither training nor "
                        "validation)", folds_path, n_missing, len(out))
        return out
    pos = series[ANEURYSM_PRESENT].fill_null(0).to_list() if ANEURYSM_PRESENT in series.columns else [0] * len(uids)
    return make_folds(uids, pos, n_folds, seed)
