"""Cross-validation folds, the one splitter of the package: series grouped by patient, stratified on every label.

scikit-learn's StratifiedGroupKFold balances one label only; here 14 labels (several per series, some with ~46
positives in 4,348 series) must all have positives in every validation fold, or that fold's AUC is undefined. We use
iterative stratification (Sechidis, Tsoumakas and Vlahavas, 2011) over groups: take the label with the fewest
remaining positives, hand each group that has it to the fold that still wants most of it (ties: the fold that
wants most series, then a seeded coin), repeat. Rare labels are placed first, while every fold still has room.
A short local search then moves single groups between folds while that brings every column and the fold sizes
closer to their targets (and never empties a column that could have a positive in every fold); it repairs what
the one-label-at-a-time pass leaves on small tables where labels co-occur a lot.

``rsna-aneurysm folds`` writes a table with it (``make_folds``); a training run without a table computes the same
split of its own series (``resolve_folds`` on ``series_labels`` of the patch index), and whoever recomputes a run's
folds later (out-of-fold prediction) must pass the same series table to get the same assignment.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl

from ..constants import ID_COL, LABEL_COLS, MODALITIES

log = logging.getLogger(__name__)

PATIENT_COL = "PatientID"
MODALITY_COL = "Modality"


class FoldsError(ValueError):
    """A folds table or series table is missing, unreadable, lacks the needed columns or cannot be split."""


def stratification_matrix(labels: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    """(n, L) non-negative counts the folds should balance: the 14 labels, then one column per modality present."""
    names = [c for c in LABEL_COLS if c in labels.columns]
    cols = [labels[c].cast(pl.Float64).fill_null(0).to_numpy() for c in names]
    if MODALITY_COL in labels.columns:
        mods = labels[MODALITY_COL].cast(pl.String).fill_null("unknown").to_numpy()
        known = [m for m in MODALITIES if m in set(mods)] + sorted(set(mods) - set(MODALITIES))
        for m in known:
            names.append(f"{MODALITY_COL}={m}")
            cols.append((mods == m).astype(np.float64))
    if not cols:
        return np.zeros((labels.height, 0)), []
    return np.stack(cols, axis=1), names


def iterative_group_stratification(y: np.ndarray, groups: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold index (0..k-1) per row so that each group lands in one fold and every column of ``y`` is spread evenly.

    ``y`` holds per-row counts (n, L); ``groups`` one key per row. Deterministic for a seed and independent of
    the row order.
    """
    y = np.asarray(y, dtype=np.float64)
    n = y.shape[0]
    if k < 2:
        raise FoldsError(f"k must be at least 2, got {k}")
    keys, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    if len(keys) < k:
        raise FoldsError(f"cannot make {k} folds from {len(keys)} groups")
    g_counts = np.zeros((len(keys), y.shape[1]))
    np.add.at(g_counts, inverse, y)
    g_size = np.bincount(inverse, minlength=len(keys)).astype(np.float64)

    rng = np.random.default_rng(seed)
    # A seeded random rank per group (groups sorted by key first) breaks every remaining tie reproducibly.
    rank = rng.permutation(len(keys))
    want = np.tile(g_counts.sum(0) / k, (k, 1))  # (k, L) how much of each column each fold still wants
    want_size = np.full(k, n / k)
    fold_of_group = np.full(len(keys), -1)

    totals = np.maximum(g_counts.sum(0), 1.0)

    def assign(g: int, label: int | None) -> None:
        # Keys, most important first: does the fold still want this label; its relative want of all the group's
        # labels (rare ones weigh most, and Aneurysm Present and the modality stay balanced while rare labels are
        # placed); its want of series; a seeded coin.
        keys = [want[:, label] > 1e-9 if label is not None else np.zeros(k),
                (want * (g_counts[g] / totals)).sum(1), want_size, rng.random(k)]
        f = int(np.lexsort(keys[::-1])[-1])
        fold_of_group[g] = f
        want[f] -= g_counts[g]
        want_size[f] -= g_size[g]

    while (fold_of_group < 0).any():
        left = fold_of_group < 0
        remaining = (g_counts[left] > 0).sum(0)
        if remaining.any():
            label = int(np.argmin(np.where(remaining > 0, remaining, np.inf)))
            todo = np.flatnonzero(left & (g_counts[:, label] > 0))
        else:
            label, todo = None, np.flatnonzero(left)
        # Bigger groups first (they are the hardest to fit), then the seeded rank.
        todo = todo[np.lexsort((rank[todo], -g_size[todo]))]
        for g in todo:
            assign(int(g), label)
    _refine(fold_of_group, g_counts, g_size, k, np.argsort(rank))
    return fold_of_group[inverse]


def _fold_cost(counts: np.ndarray, size: np.ndarray, target: np.ndarray, target_size: float,
               must_have: np.ndarray) -> np.ndarray:
    """Cost per fold: squared deviation from the target of each column (relative, chi-square like) and of the
    size, plus a large penalty for each column that should have a positive in the fold and has none."""
    dev = ((counts - target) ** 2 / np.maximum(target, 1.0)).sum(-1)
    empty = ((counts <= 0) & must_have).sum(-1)
    return dev + (size - target_size) ** 2 / max(target_size, 1.0) + 1e3 * empty


def _refine(fold_of_group: np.ndarray, g_counts: np.ndarray, g_size: np.ndarray, k: int, order: np.ndarray,
            max_passes: int = 20) -> None:
    """Greedy local search after the iterative pass: move single groups to another fold while that lowers the
    total cost (``_fold_cost``); fixes what the one-label-at-a-time pass leaves on small or tangled tables."""
    counts = np.zeros((k, g_counts.shape[1]))
    np.add.at(counts, fold_of_group, g_counts)
    size = np.bincount(fold_of_group, weights=g_size, minlength=k).astype(np.float64)
    target = g_counts.sum(0) / k
    target_size = g_size.sum() / k
    must_have = g_counts.sum(0) >= k
    for _ in range(max_passes):
        moved = False
        for g in order:
            a, c, n = fold_of_group[g], g_counts[g], g_size[g]
            before = _fold_cost(counts, size, target, target_size, must_have)
            a_after = _fold_cost(counts[a] - c, size[a] - n, target, target_size, must_have)
            b_after = _fold_cost(counts + c, size + n, target, target_size, must_have)
            delta = a_after - before[a] + b_after - before
            delta[a] = 0.0
            b = int(np.argmin(delta))
            if delta[b] < -1e-9:
                counts[a] -= c
                counts[b] += c
                size[a] -= n
                size[b] += n
                fold_of_group[g] = b
                moved = True
        if not moved:
            break


def _check_unique_ids(df: pl.DataFrame, source: str) -> None:
    if ID_COL not in df.columns:
        raise FoldsError(f"{source}: no {ID_COL} column (columns: {df.columns})")
    dup = df.filter(pl.col(ID_COL).is_duplicated())[ID_COL].unique().sort().to_list()
    if dup:
        raise FoldsError(f"{source}: {len(dup)} duplicated {ID_COL} values: {', '.join(map(str, dup[:5]))}"
                         + (", ..." if len(dup) > 5 else ""))


def _groups(labels: pl.DataFrame, group_col: str | None) -> np.ndarray:
    """One group key per row: ``p:<patient>`` where ``group_col`` holds a value, else ``s:<series uid>``."""
    uids = labels[ID_COL].cast(pl.String).to_numpy()
    if group_col is None or group_col not in labels.columns:
        return np.array([f"s:{u}" for u in uids])
    pid = labels[group_col].cast(pl.String).to_numpy()
    return np.array([f"p:{p}" if p not in (None, "") else f"s:{u}" for p, u in zip(pid, uids)])


def make_folds(labels: pl.DataFrame, k: int = 5, seed: int = 0, group_col: str | None = PATIENT_COL
               ) -> pl.DataFrame:
    """``SeriesInstanceUID, fold`` (+ the group column when used) for a train.csv-shaped table.

    Stratifies on the label columns and ``Modality`` that ``labels`` has; series are grouped by ``group_col``
    where it holds a value, and a series without one is its own group. The rows keep the order of ``labels``.
    """
    _check_unique_ids(labels, "labels")
    y, _ = stratification_matrix(labels)
    uids = labels[ID_COL].cast(pl.String).to_numpy()
    use_groups = group_col is not None and group_col in labels.columns
    folds = iterative_group_stratification(y, _groups(labels, group_col), k, seed)
    out = pl.DataFrame({ID_COL: uids, "fold": folds.astype(np.int32)})
    if use_groups:
        out = out.with_columns(labels[group_col].cast(pl.String).alias(group_col))
    return out


def series_labels(index: pl.DataFrame) -> pl.DataFrame:
    """The series table folds are computed from: one row per series of ``index`` (e.g. the patch cache index,
    several rows per series), sorted by uid, with each label column's max over its rows, and ``PatientID`` and
    ``Modality`` (first value) when ``index`` has them.

    Training and whoever recomputes its folds must build the table the same way (this function on the same index)
    for ``resolve_folds`` to give the same assignment.
    """
    if ID_COL not in index.columns:
        raise FoldsError(f"series table has no {ID_COL} column (columns: {index.columns})")
    aggs = [pl.col(c).max() for c in LABEL_COLS if c in index.columns]
    aggs += [pl.col(c).drop_nulls().first() for c in (PATIENT_COL, MODALITY_COL) if c in index.columns]
    return index.with_columns(pl.col(ID_COL).cast(pl.String)).group_by(ID_COL).agg(aggs).sort(ID_COL)


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


def resolve_folds(series: pl.DataFrame, folds_path: str | Path | None, n_folds: int = 5, seed: int = 42
                  ) -> pl.DataFrame:
    """``SeriesInstanceUID, fold`` (Int64, sorted by uid) of every series in ``series``.

    From ``folds_path`` when given (series it lacks get fold -1 and a warning). Otherwise ``make_folds`` on
    ``series``: one row per series with the 14 label columns (fewer: a warning, the missing ones are not
    balanced), and ``PatientID`` / ``Modality`` when known (``series_labels`` builds it from a patch index).
    Without ``PatientID`` each series is its own patient (a warning says so). Deterministic for a seed and
    independent of the row order.
    """
    _check_unique_ids(series, "series table")
    uids = series.select(pl.col(ID_COL).cast(pl.Utf8)).sort(ID_COL)
    if folds_path:
        table = read_folds(folds_path)
        out = uids.join(table, on=ID_COL, how="left").with_columns(pl.col("fold").fill_null(-1))
        n_missing = int((out["fold"] == -1).sum())
        if n_missing:
            log.warning("folds table %s lacks %d of %d series: they get fold -1 (used for neither training nor "
                        "validation)", folds_path, n_missing, len(out))
        return out
    missing = [c for c in LABEL_COLS if c not in series.columns]
    if missing:
        log.warning("folds: the series table lacks %d of %d label columns (%s): they are not balanced over the "
                    "folds", len(missing), len(LABEL_COLS), ", ".join(missing[:3]) + (", ..." if len(missing) > 3
                                                                                         else ""))
    if PATIENT_COL not in series.columns or series[PATIENT_COL].is_null().all():
        log.warning("folds: no %s for the %d series, so each series is its own patient (the competition's train "
                    "set has one series per patient); to group by patient, write a table with `rsna-aneurysm folds "
                    "--read-patient-ids` and set data.folds", PATIENT_COL, series.height)
    n_groups = len(np.unique(_groups(series, PATIENT_COL))) if series.height else 0
    if n_groups < n_folds:
        # Too few to split (a toy table): one patient per fold, the other folds stay empty (training such a fold
        # fails with a clear message), instead of failing whoever only needs the table.
        log.warning("folds: %d patient(s) for %d folds: folds %d-%d stay empty", n_groups, n_folds, max(n_groups, 1),
                    n_folds - 1)
        if n_groups < 2:
            return uids.with_columns(pl.lit(0, pl.Int64).alias("fold"))
    folds = make_folds(series, k=min(n_folds, n_groups), seed=seed)
    return uids.join(folds.select(ID_COL, pl.col("fold").cast(pl.Int64)), on=ID_COL, how="left")


def fold_positive_counts(labels: pl.DataFrame, folds: pl.DataFrame) -> pl.DataFrame:
    """One row per fold: number of series, then positives of each label column in that fold's validation part."""
    joined = folds.select(ID_COL, "fold").join(labels, on=ID_COL, how="left")
    cols = [c for c in LABEL_COLS if c in labels.columns]
    return (joined.group_by("fold").agg(pl.len().alias("series"), *[pl.col(c).sum() for c in cols])
            .sort("fold"))


def empty_cells(counts: pl.DataFrame) -> list[tuple[int, str]]:
    """(fold, column) pairs whose validation part has no positive (that fold's AUC would be undefined)."""
    cols = [c for c in counts.columns if c in LABEL_COLS]
    return [(int(row["fold"]), c) for row in counts.iter_rows(named=True) for c in cols if not row[c]]


def format_counts(counts: pl.DataFrame) -> str:
    """Per-fold positives as a text table: one line per column, one number per fold."""
    folds = counts["fold"].to_list()
    lines = [f"{'column':<45}" + "".join(f"{'fold ' + str(f):>9}" for f in folds)]
    for c in counts.columns:
        if c == "fold":
            continue
        lines.append(f"{c:<45}" + "".join(f"{v:>9}" for v in counts[c].to_list()))
    return "\n".join(lines)


def _patient_id_of(series_dir: Path) -> str | None:
    import pydicom

    first = next(iter(sorted(series_dir.glob("*.dcm"))), None)
    if first is None:
        return None
    ds = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=[PATIENT_COL])
    value = ds.get(PATIENT_COL)
    return str(value) if value not in (None, "") else None


def read_patient_ids(series_root: str | Path, uids: list[str], workers: int = 8) -> pl.DataFrame:
    """``SeriesInstanceUID, PatientID`` from one DICOM header per series (pixels not read); missing -> null."""
    series_root = Path(series_root)
    if not series_root.is_dir():
        raise FoldsError(f"{series_root}: series folder does not exist")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pids = list(pool.map(lambda u: _patient_id_of(series_root / u), uids))
    n_missing = sum(p is None for p in pids)
    if n_missing:
        log.warning("%d of %d series have no readable PatientID under %s; they form their own groups",
                    n_missing, len(uids), series_root)
    return pl.DataFrame({ID_COL: uids, PATIENT_COL: pids}, schema={ID_COL: pl.String, PATIENT_COL: pl.String})
