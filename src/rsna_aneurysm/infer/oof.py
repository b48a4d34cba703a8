"""Out-of-fold predictions: each fold's model predicts, scan by scan, the validation series it never trained on.

The fold of each series is recomputed exactly as training did (the run's folds table, or the deterministic split of
the series in its patch cache), and each series goes through the same scan-level inference as the submission
(``infer.scan``) from its preprocessed volume. The table (``SeriesInstanceUID, fold`` + the 14 columns) is what
``rsna-aneurysm score`` reads; the run folder also gets ``prevalence.json`` (the predictor's fallback row).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..constants import ANEURYSM_PRESENT, ID_COL, LABEL_COLS, LOCATION_COLS
from ..region.infer import has_region, load_region, predict_two_stage
from .predictor import PREVALENCE_FILE, PredictorConfig, find_checkpoints, write_prevalence
from .scan import crop_to_mask, predict_volume
from .sliding_window import SlidingWindowInferer, prepare_model

log = logging.getLogger(__name__)


class OOFError(RuntimeError):
    """The run or its preprocessed folder lacks what out-of-fold prediction needs."""


def run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not path.is_file():
        raise OOFError(f"{run_dir}: no config.json (is it a training run folder, weights/<run>?)")
    return json.loads(path.read_text())


def series_folds(cfg: dict[str, Any], pre_dir: Path) -> pl.DataFrame:
    """``SeriesInstanceUID, fold`` of every preprocessed series, as the training run assigned them."""
    from ..data.cache import read_index
    from ..data.splits import resolve_folds

    data = cfg.get("data") or {}
    cache_dir = Path(data["cache_dir"]) if data.get("cache_dir") else pre_dir / "patch_cache"
    if (cache_dir / "index.parquet").is_file():  # the series training split, exactly
        series = read_index(cache_dir).group_by(ID_COL).agg(pl.col(ANEURYSM_PRESENT).max()).sort(ID_COL)
    else:
        log.warning("%s: no patch cache index; folds are computed from the preprocessed series", cache_dir)
        labels = pl.read_csv(pre_dir / "train.csv", columns=[ID_COL, ANEURYSM_PRESENT],
                             schema_overrides={ID_COL: pl.Utf8})
        series = _manifest(pre_dir).select(ID_COL).join(labels, on=ID_COL, how="left").sort(ID_COL)
    return resolve_folds(series, data.get("folds"), int(data.get("n_folds", 5)), int(data.get("fold_seed", 42)))


def _manifest(pre_dir: Path) -> pl.DataFrame:
    path = pre_dir / "manifest.parquet"
    if not path.is_file():
        raise OOFError(f"{pre_dir}: no manifest.parquet (run `rsna-aneurysm preprocess` first)")
    m = pl.read_parquet(path)
    return m.filter(pl.col("status") == "ok")


def _load_pre(pre_dir: Path, row: dict[str, Any], spacing_mm: float):
    """Preprocessed volume and mask of one manifest row, resampled when the patches used another spacing."""
    from ..io.nifti import read_volume
    from ..preprocess.geometry import resample

    vol = read_volume(pre_dir / row["volume"], mmap=False)
    mask = read_volume(pre_dir / row["mask"], mmap=False) if row.get("mask") else None
    if not np.allclose(vol.spacing, spacing_mm, atol=1e-3):
        vol = resample(vol, (spacing_mm,) * 3, "linear")
        if mask is not None:
            mask = resample(mask, interpolator="nearest", reference=vol, default_value=0, dtype=np.uint8)
    vol = vol.with_array(np.asarray(vol.array, dtype=np.float32))
    return vol, mask


def run_oof(run_dir: str | Path, preprocessed: str | Path | None = None, folds: list[int] | None = None,
            cfg: PredictorConfig | None = None, out: str | Path | None = None, limit: int | None = None
            ) -> pl.DataFrame:
    """Predict every fold's validation series; write and return the out-of-fold table (see the module docstring).

    ``cfg`` supplies the inference settings (window, TTA, aggregation, crop, checkpoint); its budget is not used.
    ``limit``: at most this many series per fold (a quick look).
    """
    import torch

    from ..train.checkpoint import build_from_checkpoint, load_checkpoint

    run_dir = Path(run_dir)
    cfg = cfg or PredictorConfig()
    train_cfg = run_config(run_dir)
    pre_dir = Path(preprocessed or (train_cfg.get("data") or {}).get("preprocessed") or "")
    if not str(pre_dir) or not (pre_dir / "manifest.parquet").is_file():
        raise OOFError(f"preprocessed folder {str(pre_dir) or '(unset)'} has no manifest.parquet; pass --data PRE")
    ckpts = find_checkpoints(run_dir, cfg.checkpoint)
    wanted = folds if folds is not None else list(ckpts)
    missing = [f for f in wanted if f not in ckpts]
    if missing or not wanted:
        raise OOFError(f"{run_dir}: no {cfg.checkpoint} checkpoint for fold(s) {missing or wanted}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    manifest = _manifest(pre_dir)
    table = series_folds(train_cfg, pre_dir).join(manifest, on=ID_COL, how="inner")
    rows: list[dict[str, Any]] = []
    regions: list[dict[str, Any]] = []
    bundle = None
    if cfg.pipeline != "whole" and has_region(run_dir):
        prior = None
        if (pre_dir / "train.csv").is_file():
            lab = pl.read_csv(pre_dir / "train.csv", columns=list(LOCATION_COLS))
            prior = np.array([float(lab[c].cast(pl.Float64).mean()) for c in LOCATION_COLS])
        bundle = load_region(run_dir, cfg.two_stage.atlas_sigma_mm, prior, device=cfg.window.device)
    elif cfg.pipeline == "two_stage":
        raise OOFError(f"{run_dir}: pipeline two_stage needs region/region.json (rsna-aneurysm region train)")
    for fold in wanted:
        ckpt = load_checkpoint(ckpts[fold])
        model = prepare_model(build_from_checkpoint(ckpt), cfg.window.device, copy_model=False,
                              precision=cfg.window.precision)
        patch = ckpt.get("patch") or {}
        del ckpt
        spacing = float(cfg.spacing_mm or patch.get("spacing_mm") or 1.0)
        roi = cfg.window.roi_size or tuple(patch.get("size") or (64, 64, 64))
        inferer = SlidingWindowInferer(replace(cfg.window, roi_size=tuple(int(r) for r in roi)))
        val = table.filter(pl.col("fold") == fold).sort(ID_COL)
        if limit is not None:
            val = val.head(limit)
        t0 = time.perf_counter()
        for row in val.iter_rows(named=True):
            vol, mask = _load_pre(pre_dir, row, spacing)
            vol, mask = crop_to_mask(vol, mask, cfg.crop_margin_mm)
            if bundle is not None:
                two = predict_two_stage([model], vol, None if mask is None else mask.array, bundle, inferer,
                                        cfg.aggregate, cfg.two_stage, tta=cfg.tta_flip)
                pred = two.scan
                regions.append({ID_COL: row[ID_COL], "fold": fold, "source": two.box.source,
                                "spread_mm": two.box.spread_mm, "reason": two.box.reason,
                                **{f"center_{a}": float(v) for a, v in zip("xyz", two.box.center)},
                                **{f"size_{a}": float(v) for a, v in zip("xyz", two.box.size_mm)},
                                "peaks": json.dumps([[round(float(v), 2) for v in p] + [round(float(q), 4)]
                                                     for p, q in zip(two.peaks_world, two.peaks_prob)])})
            else:
                pred = predict_volume([model], vol.array, None if mask is None else mask.array, inferer,
                                      cfg.aggregate, tta=cfg.tta_flip)
            rows.append({ID_COL: row[ID_COL], "fold": fold, **dict(zip(LABEL_COLS, pred.probs.tolist()))})
        log.info("fold %d: %d validation series in %.1f s", fold, val.height, time.perf_counter() - t0)

    schema = {ID_COL: pl.Utf8, "fold": pl.Int64, **{c: pl.Float64 for c in LABEL_COLS}}
    oof = pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
    out = Path(out) if out else run_dir / "oof.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    oof.write_parquet(out)
    if regions:
        reg = pl.DataFrame(regions)
        reg.write_parquet(out.with_name(out.stem + "_regions.parquet"))
        summary = region_recall(reg, pre_dir)
        log.info("region: %s", summary)
        (out.parent / (out.stem + "_regions.json")).write_text(json.dumps(summary, indent=2) + "\n")
    if (pre_dir / "train.csv").is_file():
        write_prevalence(pre_dir / "train.csv", run_dir / PREVALENCE_FILE)
    return oof


def region_recall(regions: pl.DataFrame, pre_dir: str | Path) -> dict[str, Any]:
    """Stage one's metrics: share of the localizers inside the predicted box, box sizes, fallback count."""
    out: dict[str, Any] = {"series": regions.height,
                           "fallback": int((regions["source"] == "fallback").sum()),
                           "box_mm_mean": [round(float(regions[f"size_{a}"].mean()), 1) for a in "xyz"],
                           "box_ml_mean": round(float((regions["size_x"] * regions["size_y"] * regions["size_z"])
                                                      .mean()) / 1000.0, 1)}
    path = Path(pre_dir) / "localizers.parquet"
    if path.is_file():
        locs = pl.read_parquet(path).filter((pl.col("status") == "ok") & pl.col("world_x").is_not_null())
        j = locs.join(regions, on=ID_COL, how="inner")
        inside = pl.all_horizontal(*((pl.col(f"world_{a}") - pl.col(f"center_{a}")).abs() <= pl.col(f"size_{a}") / 2
                                     for a in "xyz"))
        j = j.with_columns(inside.alias("inside"))
        out["localizers"] = j.height
        out["recall"] = round(float(j["inside"].mean()), 4) if j.height else None
        out["missed"] = [f"{r[ID_COL]}: {r['location']}" for r in j.filter(~pl.col("inside")).iter_rows(named=True)]
    return out
