"""``resolve_folds``: a folds table when given, else the patient-grouped split stratified on all 14 labels."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import pytest

from rsna_aneurysm.constants import ANEURYSM_PRESENT, ID_COL, LABEL_COLS, LOCATION_COLS
from rsna_aneurysm.data.folds import PATIENT_COL, FoldsError, make_folds, resolve_folds, series_labels


def series_table(seed: int = 0, n_patients: int = 48) -> pl.DataFrame:
    """About 80 series of 48 patients (1-3 series each); every location has 3-6 positives, Aneurysm Present ~30."""
    rng = np.random.default_rng(seed)
    uids, pids = [], []
    for p in range(n_patients):
        for _ in range(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])):
            uids.append(f"1.2.{len(uids):04d}")
            pids.append(f"P{p:03d}")
    n = len(uids)
    loc = np.zeros((n, len(LOCATION_COLS)), dtype=int)
    positive = rng.choice(n, n // 2, replace=False)
    for j in range(len(LOCATION_COLS)):
        loc[rng.choice(positive, 3 + j % 4, replace=False), j] = 1
    return pl.DataFrame({ID_COL: uids, PATIENT_COL: pids, **{c: loc[:, j] for j, c in enumerate(LOCATION_COLS)},
                         ANEURYSM_PRESENT: (loc.sum(1) > 0).astype(int)})


def per_fold_positives(series: pl.DataFrame, folds: pl.DataFrame) -> pl.DataFrame:
    return folds.join(series, on=ID_COL).group_by("fold").agg(pl.col(c).sum() for c in LABEL_COLS).sort("fold")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_keeps_patients_together_and_balances_every_label(seed: int):
    series = series_table(seed)
    folds = resolve_folds(series, None, n_folds=3, seed=42)
    assert folds.columns == [ID_COL, "fold"] and folds.schema["fold"] == pl.Int64
    assert folds[ID_COL].to_list() == sorted(series[ID_COL].to_list())
    assert sorted(folds["fold"].unique().to_list()) == [0, 1, 2]
    joined = folds.join(series, on=ID_COL)
    assert joined.group_by(PATIENT_COL).agg(pl.col("fold").n_unique())["fold"].max() == 1
    assert (series.group_by(PATIENT_COL).len()["len"] > 1).sum() >= 10  # the grouping has work to do
    counts = per_fold_positives(series, folds)
    for c in LABEL_COLS:
        total = series[c].sum()
        assert np.abs(counts[c].to_numpy() - total / 3).max() <= 1.0, (c, counts[c].to_list())
        assert counts[c].min() >= 1, c  # every validation fold can measure every AUC
    sizes = joined.group_by("fold").len()["len"].to_numpy()
    assert sizes.max() - sizes.min() <= 3


def test_split_is_deterministic_order_free_and_the_folds_command_split():
    series = series_table(0)
    folds = resolve_folds(series, None, 3, 7)
    assert resolve_folds(series.sample(fraction=1.0, shuffle=True, seed=5), None, 3, 7).equals(folds)
    assert resolve_folds(series.select(reversed(series.columns)), None, 3, 7).equals(folds)
    command = make_folds(series, k=3, seed=7).sort(ID_COL)
    assert command["fold"].cast(pl.Int64).to_list() == folds["fold"].to_list()
    assert not resolve_folds(series, None, 3, 8)["fold"].equals(folds["fold"])


def test_without_patient_ids_each_series_is_its_own_patient_and_a_warning_says_so(caplog):
    series = series_table(0).drop(PATIENT_COL)
    with caplog.at_level(logging.WARNING, logger="rsna_aneurysm.data.folds"):
        folds = resolve_folds(series, None, 3, 42)
    assert "each series is its own patient" in caplog.text
    expected = make_folds(series.with_columns(pl.lit(None, pl.String).alias(PATIENT_COL)), k=3, seed=42)
    assert folds["fold"].to_list() == expected.sort(ID_COL)["fold"].cast(pl.Int64).to_list()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rsna_aneurysm.data.folds"):
        resolve_folds(series_table(0), None, 3, 42)
    assert "own patient" not in caplog.text


def test_series_labels_turns_a_patch_index_into_the_series_table():
    series = series_table(1)
    # A patch index: several rows per series, negatives of positive series carry no labels.
    patches = pl.concat([series, series.with_columns(pl.lit(0, pl.Int64).alias(c) for c in LABEL_COLS)])
    patches = patches.sample(fraction=1.0, shuffle=True, seed=2)
    table = series_labels(patches)
    assert table.height == series.height and table[ID_COL].to_list() == sorted(series[ID_COL].to_list())
    cols = [ID_COL, PATIENT_COL, *LABEL_COLS]
    assert table.select(cols).equals(series.sort(ID_COL).select(cols))
    assert resolve_folds(table, None, 3, 42).equals(resolve_folds(series, None, 3, 42))


def test_a_folds_table_wins_and_is_validated(tmp_path, caplog):
    series = series_table(0)
    uids = sorted(series[ID_COL].to_list())
    pl.DataFrame({ID_COL: uids[1:], "fold": [i % 2 for i in range(len(uids) - 1)]}).write_csv(tmp_path / "f.csv")
    with caplog.at_level(logging.WARNING, logger="rsna_aneurysm.data.folds"):
        folds = resolve_folds(series, tmp_path / "f.csv", 3, 42)
    assert folds["fold"].to_list() == [-1] + [i % 2 for i in range(len(uids) - 1)]
    assert "lacks 1 of" in caplog.text
    pl.DataFrame({ID_COL: uids}).write_csv(tmp_path / "bad.csv")
    with pytest.raises(FoldsError, match="lacks column"):
        resolve_folds(series, tmp_path / "bad.csv", 3, 42)
    with pytest.raises(FoldsError, match="does not exist"):
        resolve_folds(series, tmp_path / "nope.csv", 3, 42)
    with pytest.raises(FoldsError, match="duplicated"):
        resolve_folds(pl.concat([series, series.head(1)]), None, 3, 42)
    with pytest.raises(FoldsError, match="at least 2"):
        resolve_folds(series, None, 1, 42)


def test_fewer_patients_than_folds_leave_folds_empty_with_a_warning(caplog):
    three = series_table(0).head(3).with_columns(pl.Series(PATIENT_COL, ["A", "A", "B"]))
    with caplog.at_level(logging.WARNING, logger="rsna_aneurysm.data.folds"):
        folds = resolve_folds(three, None, 5, 42)
    assert "2 patient(s) for 5 folds: folds 2-4 stay empty" in caplog.text
    assert folds["fold"][0] == folds["fold"][1] and sorted(folds["fold"].unique().to_list()) == [0, 1]
    assert resolve_folds(three.head(2), None, 5, 42)["fold"].to_list() == [0, 0]
