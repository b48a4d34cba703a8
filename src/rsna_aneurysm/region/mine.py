"""Hard-negative mining: where a trained fine model fires on its own training series without an aneurysm there.

``rsna-aneurysm mine --weights weights/<run> --fold K`` runs fold K's model over the series it trained on (every
fold but K), exactly as inference does (the region crop when the run has stage one, else the head), takes the
strongest heatmap peaks of each series and keeps those farther than ``safety_mm`` from every aneurysm. The table
(``SeriesInstanceUID, world_x, world_y, world_z, heat``) feeds ``cache.mined_negatives``; training again from the
same weights (``init_from``) on a cache with them teaches the model its own false positives.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..constants import ID_COL
from ..infer.oof import OOFError, _load_pre, _manifest, run_config, series_folds
from ..infer.predictor import PredictorConfig, find_checkpoints
from ..infer.scan import crop_to_mask, predict_volume
from ..infer.sliding_window import SlidingWindowInferer, prepare_model
from .geometry import Grid
from .infer import crop_region, find_peaks, has_region, load_region

log = logging.getLogger(__name__)

MINED_FILE = "mined_negatives.parquet"


def mine_negatives(run_dir: str | Path, preprocessed: str | Path | None = None, fold: int = 0, top_k: int = 8,
                   min_heat: float = 0.2, safety_mm: float = 12.0, peak_distance_mm: float = 10.0,
                   cfg: PredictorConfig | None = None, out: str | Path | None = None) -> pl.DataFrame:
    """Mine fold ``fold``'s training series with its model; write and return the table (default
    ``<preprocessed>/mined_negatives.parquet``)."""
    from ..train.checkpoint import build_from_checkpoint, load_checkpoint

    run_dir = Path(run_dir)
    cfg = cfg or PredictorConfig()
    train_cfg = run_config(run_dir)
    pre = Path(preprocessed or (train_cfg.get("data") or {}).get("preprocessed") or "")
    if not (pre / "manifest.parquet").is_file():
        raise OOFError(f"preprocessed folder {pre} has no manifest.parquet; pass --data PRE")
    ckpts = find_checkpoints(run_dir, cfg.checkpoint)
    if fold not in ckpts:
        raise OOFError(f"{run_dir}: no {cfg.checkpoint} checkpoint for fold {fold}; found {list(ckpts)}")
    ckpt = load_checkpoint(ckpts[fold])
    model = prepare_model(build_from_checkpoint(ckpt), cfg.window.device, copy_model=False,
                          precision=cfg.window.precision)
    patch = ckpt.get("patch") or {}
    spacing = float(cfg.spacing_mm or patch.get("spacing_mm") or 1.0)
    roi = cfg.window.roi_size or tuple(patch.get("size") or (64, 64, 64))
    inferer = SlidingWindowInferer(replace(cfg.window, roi_size=tuple(int(r) for r in roi)))
    bundle = load_region(run_dir, device=cfg.window.device) if cfg.pipeline != "whole" and has_region(run_dir) \
        else None
    table = series_folds(train_cfg, pre).join(_manifest(pre), on=ID_COL, how="inner")
    series = table.filter((pl.col("fold") != fold) & (pl.col("fold") >= 0)).sort(ID_COL)
    locs = pl.DataFrame()
    if (pre / "localizers.parquet").is_file():
        locs = pl.read_parquet(pre / "localizers.parquet").filter(pl.col("world_x").is_not_null())
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for r in series.iter_rows(named=True):
        vol, mask = _load_pre(pre, r, spacing)
        vol, mask = crop_to_mask(vol, mask, cfg.crop_margin_mm)
        if bundle is not None:
            crop, grid = crop_region(vol, bundle.locator.locate(vol, None if mask is None else mask.array))
        else:
            crop = np.asarray(vol.array, dtype=np.float32)
            grid = Grid(vol.origin, vol.spacing, tuple(crop.shape))
        pred = predict_volume([model], crop, None, inferer, cfg.aggregate, tta=False, want_heatmap=True)
        if pred.heatmap is None:
            raise OOFError(f"{run_dir}: the model has no heatmap head; mining needs one")
        heat = pred.heatmap[0] if pred.heatmap.ndim == 4 else pred.heatmap
        idx, vals = find_peaks(heat, top_k, peak_distance_mm / min(grid.spacing))
        world = grid.index_to_world(idx.astype(np.float64))
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
    path = Path(out) if out else pre / MINED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    mined.write_parquet(path)
    log.info("mined %d false-positive positions in %d of %d training series of fold %d (%.0f s) -> %s",
             mined.height, mined[ID_COL].n_unique() if mined.height else 0, series.height, fold,
             time.perf_counter() - t0, path)
    return mined
