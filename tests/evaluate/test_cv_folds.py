"""Fold splitter on a label table shaped like the real train.csv (generated here)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rsna_aneurysm.constants import ANEURYSM_PRESENT, ID_COL, LABEL_COLS, LOCATION_COLS, TRAIN_COLS
from rsna_aneurysm.data.folds import (
    empty_cells,
    fold_positive_counts,
    iterative_group_stratification,
    make_folds,
)

MODALITY_COUNTS = {"CTA": 1808, "MRA": 1252, "MRI T2": 983, "MRI T1post": 305}
N_POSITIVE = 1864
# Approximate real positives per location (Anterior Communicating most common, Left ACA rarest).
LOCATION_COUNTS = dict(zip(LOCATION_COLS, (78, 105, 285, 240, 260, 330, 363, 46, 56, 96, 110, 112, 113)))


def real_shaped_labels(seed: int = 7) -> pl.DataFrame:
    """4,348 series: the real modality mix, 43 % positive, real-like location frequencies (several per series
    possible), patients with one to three series, a few series without a PatientID."""
    rng = np.random.default_rng(seed)
    n = sum(MODALITY_COUNTS.values())
    modality = rng.permutation(np.repeat(list(MODALITY_COUNTS), list(MODALITY_COUNTS.values())))
    ap = np.zeros(n, dtype=int)
    pos = rng.choice(n, N_POSITIVE, replace=False)
    ap[pos] = 1
    loc = np.zeros((n, len(LOCATION_COLS)), dtype=int)
    p = np.array(list(LOCATION_COUNTS.values()), dtype=float)
    loc[pos, rng.choice(len(LOCATION_COLS), N_POSITIVE, p=p / p.sum())] = 1  # one location per positive series
    for j, count in enumerate(LOCATION_COUNTS.values()):  # top up to the target count: extra locations
        extra = rng.permutation(pos[loc[pos, j] == 0])[: max(0, count - loc[:, j].sum())]
        loc[extra, j] = 1
    sizes = rng.choice([1, 2, 3], size=n, p=[0.85, 0.12, 0.03])
    patient = np.repeat(np.arange(n), sizes)[:n]
    patient = patient[rng.permutation(n)]
    pid = [f"P{p:05d}" for p in patient]
    for i in rng.choice(n, 20, replace=False):
        pid[i] = None
    df = pl.DataFrame({
        ID_COL: [f"1.2.826.0.1.{i:06d}" for i in range(n)],
        "PatientAge": rng.integers(18, 90, n), "PatientSex": rng.choice(["Female", "Male"], n),
        "Modality": modality, **{c: loc[:, j] for j, c in enumerate(LOCATION_COLS)}, ANEURYSM_PRESENT: ap,
    })
    return df.select(TRAIN_COLS).with_columns(pl.Series("PatientID", pid, dtype=pl.String))


@pytest.fixture(scope="module")
def labels() -> pl.DataFrame:
    return real_shaped_labels()


@pytest.fixture(scope="module")
def folds(labels: pl.DataFrame) -> pl.DataFrame:
    return make_folds(labels, k=5, seed=0)


def test_generated_table_is_shaped_like_train_csv(labels: pl.DataFrame):
    assert labels.height == 4348 and labels.columns[:18] == list(TRAIN_COLS)
    assert labels[ANEURYSM_PRESENT].sum() == N_POSITIVE
    assert labels["Anterior Communicating Artery"].sum() == 363
    assert labels["Left Anterior Cerebral Artery"].sum() == 46
    assert (labels.select(LOCATION_COLS).sum_horizontal() > 1).sum() > 100  # several locations per series
    assert labels["PatientID"].n_unique() < 4200


def test_every_column_has_positives_in_every_validation_fold(labels: pl.DataFrame, folds: pl.DataFrame):
    counts = fold_positive_counts(labels, folds)
    assert counts.height == 5
    assert empty_cells(counts) == []
    # Rare columns are spread evenly, not merely present: Left ACA has 46 positives -> about 9 per fold.
    for c in LABEL_COLS:
        per_fold = counts[c].to_numpy()
        expected = labels[c].sum() / 5
        assert per_fold.min() >= np.floor(expected * 0.7) and per_fold.max() <= np.ceil(expected * 1.3), c
    ap = counts[ANEURYSM_PRESENT].to_numpy()
    assert np.abs(ap - N_POSITIVE / 5).max() <= 0.03 * N_POSITIVE / 5
    assert counts["series"].min() >= 4348 / 5 * 0.95 and counts["series"].max() <= 4348 / 5 * 1.05
    by_mod = folds.join(labels, on=ID_COL).group_by("fold", "Modality").len()
    for m, total in MODALITY_COUNTS.items():
        per_fold = by_mod.filter(pl.col("Modality") == m)["len"].to_numpy()
        assert len(per_fold) == 5 and np.abs(per_fold - total / 5).max() <= max(3, 0.05 * total / 5), m


def test_patient_groups_never_straddle_folds(labels: pl.DataFrame, folds: pl.DataFrame):
    assert folds.columns == [ID_COL, "fold", "PatientID"]
    assert folds[ID_COL].to_list() == labels[ID_COL].to_list()
    per_patient = folds.drop_nulls("PatientID").group_by("PatientID").agg(pl.col("fold").n_unique())
    assert per_patient["fold"].max() == 1
    assert (folds.drop_nulls("PatientID").group_by("PatientID").len()["len"] > 1).sum() > 100


def test_split_is_stable_for_a_seed_and_independent_of_row_order(labels: pl.DataFrame, folds: pl.DataFrame):
    again = make_folds(labels, k=5, seed=0)
    assert again.equals(folds)
    shuffled = make_folds(labels.sample(fraction=1.0, shuffle=True, seed=3), k=5, seed=0)
    assert shuffled.sort(ID_COL)["fold"].to_list() == folds.sort(ID_COL)["fold"].to_list()
    other = make_folds(labels, k=5, seed=1)
    assert (other["fold"] != folds["fold"]).sum() > 1000


def test_without_patient_ids_each_series_is_its_own_group():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [0, 0]], dtype=float)
    f = iterative_group_stratification(y, np.array(["a", "a", "b", "c", "d", "e"]), k=2, seed=0)
    assert f[0] == f[1]  # group "a" together
    assert sorted(np.bincount(f, minlength=2)) == [3, 3]
    small = real_shaped_labels().head(300).drop("PatientID")
    out = make_folds(small, k=3, seed=0)
    assert out.columns == [ID_COL, "fold"] and sorted(out["fold"].unique().to_list()) == [0, 1, 2]
    with pytest.raises(ValueError, match="groups"):
        iterative_group_stratification(y, np.array(["a"] * 6), k=2)
