"""Reading label and prediction tables (parquet or csv) and aligning them on SeriesInstanceUID.

Out-of-fold prediction files and label files come from different steps; a missing or extra series would silently
change a score, so alignment is strict and the error lists the offending ids.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from ..constants import ID_COL, LABEL_COLS
from ..io.atomic import atomic_write_csv, atomic_write_parquet
from ..io.tables import MissingTableError, TableError, check_label_frame

log = logging.getLogger(__name__)


class SeriesIdMismatchError(TableError):
    """Predictions and labels do not cover the same series; ``missing`` and ``extra`` list the ids."""

    exit_code = 1  # each table is well formed; they disagree (the command ran and failed)

    def __init__(self, missing: list[str], extra: list[str], what: str = "predictions") -> None:
        self.missing = sorted(missing)
        self.extra = sorted(extra)
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} labelled series have no row in the {what}: {_preview(self.missing)}")
        if self.extra:
            parts.append(f"{len(self.extra)} series in the {what} are not in the labels: {_preview(self.extra)}")
        super().__init__("; ".join(parts))


def _preview(ids: list[str], n: int = 20) -> str:
    shown = ", ".join(ids[:n])
    return shown + (f", ... ({len(ids) - n} more)" if len(ids) > n else "")


def read_table(path: str | Path) -> pl.DataFrame:
    """Read a ``.parquet`` or ``.csv`` table; SeriesInstanceUID (and PatientID) are always read as strings."""
    path = Path(path)
    if not path.is_file():
        raise MissingTableError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".parquet":
            df = pl.read_parquet(path)
        elif path.suffix.lower() == ".csv":
            df = pl.read_csv(path, schema_overrides={ID_COL: pl.String, "PatientID": pl.String},
                             infer_schema_length=10000)
        else:
            raise TableError(f"{path}: unsupported table format {path.suffix!r} (use .parquet or .csv)")
    except (pl.exceptions.PolarsError, OSError) as e:
        raise TableError(f"{path}: cannot read table: {e}") from e
    if ID_COL in df.columns and df.schema[ID_COL] != pl.String:
        df = df.with_columns(pl.col(ID_COL).cast(pl.String))
    return df


def write_table(df: pl.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as parquet or csv (by suffix) atomically; returns the path."""
    path = Path(path)
    return atomic_write_csv(df, path) if path.suffix.lower() == ".csv" else atomic_write_parquet(df, path)


def check_unique_ids(df: pl.DataFrame, source: str) -> None:
    """Raise TableError naming duplicated SeriesInstanceUIDs in ``df``."""
    if ID_COL not in df.columns:
        raise TableError(f"{source}: no {ID_COL} column (columns: {df.columns})")
    dup = df.filter(pl.col(ID_COL).is_duplicated())[ID_COL].unique().sort().to_list()
    if dup:
        raise TableError(f"{source}: {len(dup)} duplicated {ID_COL} values: {_preview(dup)}")


def label_frame(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """SeriesInstanceUID plus the 14 label columns by name (in submission order); other columns are kept after."""
    check_unique_ids(df, source)
    df = check_label_frame(df, source)  # columns, labels 0/1 (no nulls), safe UIDs, known modalities; row and column
    rest = [c for c in df.columns if c not in (ID_COL, *LABEL_COLS)]
    return df.select(ID_COL, *LABEL_COLS, *rest)


def prediction_frame(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """SeriesInstanceUID plus the 14 prediction columns named as LABEL_COLS; extra columns (e.g. ``fold``) kept after.

    Columns are taken by name when all 14 label names are present; otherwise a table of exactly 14 columns beside
    the id is taken by position (as the leaderboard does) and renamed, with a warning.
    """
    check_unique_ids(df, source)
    if all(c in df.columns for c in LABEL_COLS):
        rest = [c for c in df.columns if c not in (ID_COL, *LABEL_COLS)]
        return df.select(ID_COL, *LABEL_COLS, *rest)
    others = [c for c in df.columns if c != ID_COL]
    if len(others) != len(LABEL_COLS):
        raise TableError(f"{source}: expected the {len(LABEL_COLS)} label columns by name, or exactly "
                         f"{len(LABEL_COLS)} columns beside {ID_COL}; got {others}")
    log.warning("%s: column names differ from the label names; matching them by position, as the leaderboard does",
                source)
    return df.select(ID_COL, *others).rename(dict(zip(others, LABEL_COLS)))


def align(labels: pl.DataFrame, preds: pl.DataFrame, what: str = "predictions") -> tuple[pl.DataFrame, pl.DataFrame]:
    """Both tables restricted to the same series in the same order (the labels' order); any mismatch is an error."""
    lab_ids = set(labels[ID_COL].to_list())
    pred_ids = set(preds[ID_COL].to_list())
    if lab_ids != pred_ids:
        raise SeriesIdMismatchError(sorted(lab_ids - pred_ids), sorted(pred_ids - lab_ids), what)
    order = labels.select(ID_COL).with_row_index("_row")
    preds = order.join(preds, on=ID_COL, how="left").sort("_row").drop("_row")
    return labels, preds


def label_matrix(df: pl.DataFrame, columns: tuple[str, ...] = LABEL_COLS) -> np.ndarray:
    """(n, len(columns)) float64 array of ``columns``."""
    return df.select(pl.col(c).cast(pl.Float64) for c in columns).to_numpy()
