"""Input tables (train.csv, test.csv, solution-like label tables, train_localizers.csv), validated once, on reading.

Every reader here raises :class:`TableError` (a ``ValueError``) whose message names the file, the row (1-based data
row: the header is not counted, so data row ``n`` is line ``n + 1`` of a CSV) and the column, for:

- a missing required column;
- a label value not in {0, 1} (a null included);
- a duplicated SeriesInstanceUID (train / labels tables) or one that is not a safe file name
  (:func:`rsna_aneurysm.layout.check_uid`);
- a Modality not in :data:`rsna_aneurysm.constants.MODALITIES` (when the table has a Modality column);
- localizer coordinates that are not a short ``{'x': .., 'y': .., ['f': ..]}`` dict of finite numbers (``f`` a
  non-negative integer), parsed with :func:`ast.literal_eval` on a string capped at :data:`MAX_COORDINATES_CHARS`;
- a localizer location not in :data:`rsna_aneurysm.constants.LOCATION_COLS`;
- a header that names a column twice (polars would silently rename the second one).

Decision: a localizer whose series is not in the series table is *not* an error (a subset of train.csv may be
preprocessed with the full localizer file); :func:`read_localizers_table` logs a warning naming those series and
the caller simply has no series to attach them to. A localizer row that repeats an earlier row exactly is kept once
(a warning names the rows): it would otherwise weigh its aneurysm twice in the patch cache. Whether a point lies
inside its image can only be checked once the series is loaded: see
:func:`rsna_aneurysm.preprocess.annotations.map_localizers` (outside the image or not finite: an unmapped localizer,
the reason in the series record's ``localizers[].status``), and ``rsna_aneurysm.data.cache.plan_cache`` (a mapped
point outside the preprocessed, head-cropped volume is not used as a positive centre).
"""

from __future__ import annotations

import ast
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import polars as pl

from ..constants import ID_COL, LABEL_COLS, LOCATION_COLS, MODALITIES, SOP_COL
from ..layout import UnsafeUIDError, check_uid

log = logging.getLogger(__name__)

MODALITY_COL = "Modality"
COORD_COL = "coordinates"
LOCATION_COL = "location"
LOCALIZER_COLS: tuple[str, ...] = (ID_COL, SOP_COL, COORD_COL, LOCATION_COL)
# A competition coordinates string is ~40 characters; anything longer than this is refused before parsing.
MAX_COORDINATES_CHARS = 1000
# A frame index above this is refused (a multi-frame file holds hundreds of frames; an Int64 column holds it).
MAX_FRAME = 2**31 - 1
_LABEL_TEXT = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}


class TableError(ValueError):
    """An input table is unusable: the message names the file, the row (1-based data row) and the column.

    Bad input: a command that raises it exits 2 with one error line (``exit_code``, read by ``cli_common``)."""

    exit_code = 2


class MissingTableError(TableError):
    """The table file does not exist (a missing input: exit 1, like every command's missing input)."""

    exit_code = 1


def _where(source: object, row: int | None = None, column: str | None = None) -> str:
    parts = []
    if row is not None:
        parts.append(f"row {row}")
    if column is not None:
        parts.append(f"column {column!r}")
    return f"{source}" + (f" ({', '.join(parts)})" if parts else "")


def _read_text(path: Path) -> pl.DataFrame:
    """Every column as text (so nothing is inferred, and a bad value is found by row, not by a cast error)."""
    if not path.is_file():
        raise MissingTableError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".parquet":
            df = pl.read_parquet(path)
            return df.with_columns(pl.all().cast(pl.String))
        df = pl.read_csv(path, infer_schema_length=0)
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as e:
        raise TableError(f"{path}: cannot read table: {e}") from e
    # polars renames a repeated header name to '<name>_duplicated_<n>': which of the two columns counts is unclear.
    for c in df.columns:
        base, sep, n = c.rpartition("_duplicated_")
        if sep and n.isdigit() and base in df.columns:
            raise TableError(f"{_where(path, column=base)}: the header names column {base!r} more than once")
    return df


def check_columns(df: pl.DataFrame, required: Iterable[str], source: object) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise TableError(f"{_where(source, column=missing[0])}: missing required column(s) {missing} "
                         f"(columns: {df.columns})")


def check_uids(df: pl.DataFrame, source: object, unique: bool = True) -> None:
    """Every SeriesInstanceUID is a safe file name; with ``unique``, none appears twice."""
    seen: dict[str, int] = {}
    for n, uid in enumerate(df[ID_COL].to_list(), start=1):
        try:
            s = check_uid(uid)
        except UnsafeUIDError as e:
            raise TableError(f"{_where(source, n, ID_COL)}: {e}") from None
        if unique:
            if s in seen:
                raise TableError(f"{_where(source, n, ID_COL)}: duplicated {ID_COL} {s!r} (first at row {seen[s]})")
            seen[s] = n


def check_labels(df: pl.DataFrame, source: object, columns: Sequence[str] = LABEL_COLS) -> pl.DataFrame:
    """Every value of the label ``columns`` present is 0 or 1 (no nulls); returns ``df`` with them as Int64."""
    out = []
    for c in columns:
        if c not in df.columns:
            continue
        col = df[c]
        if col.dtype.is_integer() or col.dtype == pl.Boolean:
            vals = col.cast(pl.Int64).to_list()
            bad = next((i for i, v in enumerate(vals) if v not in (0, 1)), None)
            if bad is not None:
                raise TableError(f"{_where(source, bad + 1, c)}: label {vals[bad]!r} is not 0 or 1")
            out.append(pl.Series(c, vals, dtype=pl.Int64))
            continue
        vals = []
        for n, v in enumerate(col.cast(pl.String).to_list(), start=1):
            got = _LABEL_TEXT.get(v.strip()) if v is not None else None
            if got is None:
                raise TableError(f"{_where(source, n, c)}: label {v!r} is not 0 or 1")
            vals.append(got)
        out.append(pl.Series(c, vals, dtype=pl.Int64))
    return df.with_columns(out) if out else df


def check_modality(df: pl.DataFrame, source: object) -> None:
    if MODALITY_COL not in df.columns:
        return
    for n, v in enumerate(df[MODALITY_COL].cast(pl.String).to_list(), start=1):
        if v is not None and v not in MODALITIES:
            raise TableError(f"{_where(source, n, MODALITY_COL)}: unknown modality {v!r} "
                             f"(expected one of {list(MODALITIES)})")


def _typed(path: Path, text: pl.DataFrame, labels: Sequence[str]) -> pl.DataFrame:
    """The table with usual types: ids as text, labels Int64, the rest inferred (read again, now known valid)."""
    if path.suffix.lower() == ".parquet":
        df = pl.read_parquet(path)
    else:
        try:
            df = pl.read_csv(path, schema_overrides={ID_COL: pl.String, "PatientID": pl.String},
                             infer_schema_length=10000)
        except pl.exceptions.PolarsError:
            df = text  # a column that inference cannot type: keep it as text
    df = df.with_columns(pl.col(ID_COL).cast(pl.String))
    return check_labels(df, path, labels)


def read_series_table(path: str | Path, require_labels: bool = False) -> pl.DataFrame:
    """A train.csv / test.csv / solution-like table: unique safe UIDs, valid Modality, labels 0/1 where present.

    ``require_labels``: all 14 label columns must be present (train.csv, a solution)."""
    path = Path(path)
    text = _read_text(path)
    check_columns(text, (ID_COL, *(LABEL_COLS if require_labels else ())), path)
    check_uids(text, path)
    check_labels(text, path)
    check_modality(text, path)
    return _typed(path, text, [c for c in LABEL_COLS if c in text.columns])


def read_train_table(path: str | Path) -> pl.DataFrame:
    """``train.csv``: SeriesInstanceUID and the 14 labels required (validated, see the module docstring)."""
    return read_series_table(path, require_labels=True)


def read_labels_table(path: str | Path) -> pl.DataFrame:
    """A solution / labels table (the 14 label columns required); same checks as :func:`read_train_table`."""
    return read_series_table(path, require_labels=True)


def read_labels(path: str | Path, columns: list[str] | None = None) -> pl.DataFrame:
    """A ``train.csv`` / ``solution.csv`` / ``test.csv``-like table (labels optional), validated like
    :func:`read_series_table`, UIDs as text; ``columns``: only these (each required)."""
    path = Path(path)
    if not path.is_file():
        raise MissingTableError(f"{path}: no such file (written by rsna-aneurysm synth or the competition download)")
    df = read_series_table(path)
    if columns is None:
        return df
    check_columns(df, columns, path)
    return df.select(columns)


def check_label_frame(df: pl.DataFrame, source: object, require_labels: bool = True) -> pl.DataFrame:
    """The checks of :func:`read_series_table` on an already read frame (rows numbered as in the frame)."""
    check_columns(df, (ID_COL, *(LABEL_COLS if require_labels else ())), source)
    check_uids(df.with_columns(pl.col(ID_COL).cast(pl.String)), source)
    check_modality(df, source)
    return check_labels(df, source)


def _finite(v: object) -> float | None:
    """``v`` as a float when it is a finite real number (not a bool); None otherwise (an int too big for a float
    included: ``float(10**400)`` raises OverflowError)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        x = float(v)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def parse_coordinates_text(text: object) -> tuple[float, float, int | None]:
    """``"{'x': 258.36, 'y': 261.36[, 'f': 12]}"`` -> ``(x, y, f or None)``; ValueError for anything else.

    The string is length-capped before :func:`ast.literal_eval` (which is safe but not cheap on huge input); only
    the keys x, y and f are allowed; x and y must be finite numbers, f a non-negative integer (at most
    :data:`MAX_FRAME`)."""
    if isinstance(text, dict):
        value = text
    else:
        if not isinstance(text, str):
            raise ValueError(f"coordinates {text!r} are not a string")
        if len(text) > MAX_COORDINATES_CHARS:
            raise ValueError(f"coordinates string of {len(text)} characters (at most {MAX_COORDINATES_CHARS})")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            raise ValueError(f"malformed coordinates {text[:80]!r}: {type(e).__name__}") from None
    if not isinstance(value, dict):
        raise ValueError(f"coordinates {str(text)[:80]!r} are not a dict")
    extra = set(value) - {"x", "y", "f"}
    if extra or "x" not in value or "y" not in value:
        raise ValueError(f"coordinates {str(text)[:80]!r} must have keys 'x', 'y' and optionally 'f' "
                         f"(got {sorted(map(str, value))})")
    xy = []
    for k in ("x", "y"):
        v = value[k]
        if _finite(v) is None:
            raise ValueError(f"coordinate {k}={str(v)[:40]!r} is not a finite number")
        xy.append(float(v))
    f = value.get("f")
    if f is not None:
        if _finite(f) is None or float(f) != int(f) or not 0 <= int(f) <= MAX_FRAME:
            raise ValueError(f"frame f={str(f)[:40]!r} is not a non-negative integer (at most {MAX_FRAME})")
        f = int(f)
    return xy[0], xy[1], f


def read_localizers_table(path: str | Path, series: Iterable[str] | None = None) -> pl.DataFrame:
    """``train_localizers.csv`` (all columns as text), every row validated; ``series``: the known series UIDs
    (a localizer of another series is logged as a warning, see the module docstring)."""
    path = Path(path)
    df = _read_text(path)
    check_columns(df, LOCALIZER_COLS, path)
    check_uids(df, path, unique=False)
    for n, r in enumerate(df.select(SOP_COL, COORD_COL, LOCATION_COL).iter_rows(), start=1):
        sop, coords, loc = r
        if sop is None or not sop.strip():
            raise TableError(f"{_where(path, n, SOP_COL)}: empty {SOP_COL}")
        try:
            parse_coordinates_text(coords)
        except ValueError as e:
            raise TableError(f"{_where(path, n, COORD_COL)}: {e}") from None
        if loc not in LOCATION_COLS:
            raise TableError(f"{_where(path, n, LOCATION_COL)}: unknown location {str(loc)[:80]!r} "
                             f"(expected one of the {len(LOCATION_COLS)} location columns of train.csv)")
    if series is not None:
        known = set(map(str, series))
        unknown = sorted(set(df[ID_COL].to_list()) - known)
        if unknown:
            shown = ", ".join(unknown[:10]) + (f", ... ({len(unknown) - 10} more)" if len(unknown) > 10 else "")
            log.warning("%s: localizers of %d series not in the series table (ignored): %s", path, len(unknown),
                        shown)
    # An exact repeat of a row (same series, SOPInstanceUID, coordinates, location) would weigh that aneurysm twice
    # in the patch cache: only its first occurrence is kept, with a warning naming the rows.
    first = df.select(pl.struct(list(LOCALIZER_COLS)).is_first_distinct()).to_series()
    if not first.all():
        rows = [n for n, keep in enumerate(first.to_list(), start=1) if not keep]
        log.warning("%s: %d row(s) repeat an earlier row exactly and are ignored: row(s) %s", path, len(rows),
                    ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else ""))
        df = df.filter(first)
    return df
