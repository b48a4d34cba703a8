"""Hard-negative mining: where a trained fine model fires on its own training series without an aneurysm there.

``rsna-aneurysm mine --weights weights/<run> --fold K`` runs fold K's model over the series it trained on (every
fold but K), through the kernel's own scan pipeline (the region crop when the run has stage one, else the head),
takes the strongest heatmap peaks of each series and keeps those farther than ``safety_mm`` from every aneurysm.
The table (``SeriesInstanceUID, world_x, world_y, world_z, heat``) feeds ``cache.mined_negatives``; training again
from the same weights (``init_from``) on a cache with them teaches the model its own false positives.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..constants import ID_COL
from ..io.atomic import atomic_path
from ..layout import read_localizers, read_manifest
from ..region.stage_one import find_peaks
from .oof import OOFError, fold_pipeline, load_preprocessed, preprocessed_dir, run_config, series_folds
from .pipeline import PredictorConfig

log = logging.getLogger(__name__)


def mine_negatives(run_dir: str | Path, preprocessed: str | Path | None = None, fold: int = 0, top_k: int = 8,
                   min_heat: float = 0.2, safety_mm: float = 12.0, peak_distance_mm: float = 10.0,
                   cfg: PredictorConfig | None = None, out: str | Path | None = None) -> pl.DataFrame:
    """Mine fold ``fold``'s training series with its model; write and return the table (default
    ``<preprocessed>/mined_negatives.parquet``)."""
    run_dir = Path(run_dir)
    cfg = cfg or PredictorConfig()
    train_cfg = run_config(run_dir)
    pre = preprocessed_dir(run_dir, preprocessed)
    pipeline = fold_pipeline(run_dir, fold, cfg)
    table = series_folds(train_cfg, pre.root).join(read_manifest(pre), on=ID_COL, how="inner")
    series = table.filter((pl.col("fold") != fold) & (pl.col("fold") >= 0)).sort(ID_COL)
    locs = read_localizers(pre)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for r in series.iter_rows(named=True):
        vol, mask = load_preprocessed(pre.root, r)
        res = pipeline.predict(vol, mask, tta=False, want_heatmap=True)
        if res.heatmap is None:
            raise OOFError(f"{run_dir}: the model has no heatmap head; mining needs one")
        idx, vals = find_peaks(res.heatmap.array, top_k, peak_distance_mm / min(res.grid.spacing))
        world = res.grid.index_to_world(idx.astype(np.float64))
        truth = locs.filter(pl.col(ID_COL) == r[ID_COL]).select("world_x", "world_y", "world_z").to_numpy() \
            if locs.height else np.zeros((0, 3))
        for w, v in zip(world, vals):
            far = len(truth) == 0 or np.linalg.norm(truth - w[None, :], axis=1).min() > safety_mm
            if far and v >= min_heat:
                rows.append({ID_COL: r[ID_COL], "world_x": float(w[0]), "world_y": float(w[1]),
                             "world_z": float(w[2]), "heat": float(v)})
    schema = {ID_COL: pl.Utf8, "world_x": pl.Float64, "world_y": pl.Float64, "world_z": pl.Float64,
              "heat": pl.Float64}
    mined = pl.DataFrame(rows, schema=schema)
    path = Path(out) if out else pre.mined_negatives
    with atomic_path(path) as tmp:
        mined.write_parquet(tmp)
    log.info("mined %d false-positive positions in %d of %d training series of fold %d (%.0f s) -> %s",
             mined.height, mined[ID_COL].n_unique() if mined.height else 0, series.height, fold,
             time.perf_counter() - t0, path)
    return mined
