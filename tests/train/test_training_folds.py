"""Training without a folds table: the patient-grouped, label-stratified split of the cached series, and the same
assignment for whoever recomputes it from the cache (out-of-fold prediction)."""

from __future__ import annotations

import numpy as np
import polars as pl

from rsna_aneurysm.config import save_config
from rsna_aneurysm.constants import ANEURYSM_PRESENT, ID_COL, LABEL_COLS, LOCATION_COLS
from rsna_aneurysm.data.cache import read_index
from rsna_aneurysm.data.folds import PATIENT_COL, resolve_folds, series_labels
from rsna_aneurysm.train.config import TrainConfig
from rsna_aneurysm.train.data import prepare_index
from rsna_aneurysm.train.distributed import DistInfo


def write_index(cache_dir, seed: int = 0) -> pl.DataFrame:
    """A patch index of ~60 series (30 patients, 1-3 series each): 2-5 patches per series, each location has
    3-6 positive series, and only a series' positive patches carry its labels. Returns the per-series truth."""
    rng = np.random.default_rng(seed)
    uids, pids = [], []
    for p in range(30):
        for _ in range(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2])):
            uids.append(f"1.2.{len(uids):03d}")
            pids.append(f"P{p:02d}")
    n = len(uids)
    loc = np.zeros((n, len(LOCATION_COLS)), dtype=np.uint8)
    positive = rng.choice(n, n // 2, replace=False)
    for j in range(len(LOCATION_COLS)):
        loc[rng.choice(positive, 3 + j % 4, replace=False), j] = 1
    truth = np.c_[loc, loc.max(1)]
    rows = []
    for i, uid in enumerate(uids):
        for r in range(int(rng.integers(2, 6))):
            labels = truth[i] if r == 0 else np.zeros(len(LABEL_COLS), np.uint8)
            rows.append({ID_COL: uid, "fold": -1, "entry": uid, "row": r, "kind": "pos" if labels.any() else "neg",
                         PATIENT_COL: pids[i], **dict(zip(LABEL_COLS, labels.tolist()))})
    index = pl.DataFrame(rows).with_columns(pl.col(c).cast(pl.UInt8) for c in LABEL_COLS)
    cache_dir.mkdir(parents=True)
    index.sample(fraction=1.0, shuffle=True, seed=seed).write_parquet(cache_dir / "index.parquet")
    return pl.DataFrame({ID_COL: uids, PATIENT_COL: pids, **{c: truth[:, j] for j, c in enumerate(LABEL_COLS)}})


def test_training_folds_group_patients_stratify_labels_and_match_a_recomputation(tmp_path):
    cfg = TrainConfig()
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.data.n_folds, cfg.data.fold_seed = 3, 11
    truth = write_index(tmp_path / "cache")
    save_config(cfg.cache, tmp_path / "cache" / "cache_config.json")  # an existing cache built with these settings

    index = prepare_index(cfg, DistInfo())
    assert (index["fold"] >= 0).all()
    per_series = index.group_by(ID_COL).agg(pl.col("fold").n_unique().alias("n"), pl.col("fold").first())
    assert per_series["n"].max() == 1
    folds = per_series.select(ID_COL, "fold").join(truth, on=ID_COL)
    assert folds.height == truth.height
    assert folds.group_by(PATIENT_COL).agg(pl.col("fold").n_unique())["fold"].max() == 1  # no patient straddles
    counts = folds.group_by("fold").agg(pl.col(c).sum() for c in LABEL_COLS).sort("fold")
    assert counts["fold"].to_list() == [0, 1, 2]
    for c in LABEL_COLS:  # every column spread evenly, not only Aneurysm Present
        total = int(truth[c].sum())
        assert np.abs(counts[c].to_numpy() - total / 3).max() <= 1.0, (c, counts[c].to_list())
    assert counts[ANEURYSM_PRESENT].sum() == truth[ANEURYSM_PRESENT].sum()

    # Out-of-fold prediction recomputes the folds from the run's config and the same cache: the same assignment.
    again = resolve_folds(series_labels(read_index(cfg.cache_path())), cfg.data.folds, cfg.data.n_folds,
                          cfg.data.fold_seed)
    assert again.equals(per_series.select(ID_COL, pl.col("fold").cast(pl.Int64)).sort(ID_COL))
    # ... and the split training uses is the one of the series table itself (labels from the per-series truth).
    assert resolve_folds(truth, None, 3, 11).equals(again)
