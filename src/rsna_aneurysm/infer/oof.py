"""Out-of-fold predictions: each fold's model predicts, scan by scan, the validation series it never trained on.

The fold of each series is recomputed exactly as training did (the run's folds table, or the deterministic split of
the series in its patch cache), and each series goes through the submission's own scan pipeline
(:class:`~.pipeline.ScanPipeline`) from its preprocessed volume. With stage one, fold k uses the region finder
trained without fold k (``region train --per-fold``) when the run has one; otherwise the region metrics say how
many of the validation series the finder trained on (an optimistic estimate). The table (``SeriesInstanceUID,
fold`` + the 14 columns) is what ``rsna-aneurysm score`` reads; the run folder also gets ``prevalence.json`` (the
predictor's fallback row and the atlas prior, as the kernel gets them).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import polars as pl

from ..constants import ID_COL, LABEL_COLS
from ..io.atomic import atomic_path, atomic_write_text
from ..io.tables import read_labels
from ..layout import CacheDir, PreDir, RunDir, read_localizers, read_manifest
from ..volume import Volume
from .pipeline import PredictorConfig, ScanPipeline, ScanResult, WeightsError, write_prevalence

log = logging.getLogger(__name__)


class OOFError(RuntimeError):
    """The run or its preprocessed folder lacks what out-of-fold prediction needs."""


def run_config(run_dir: str | Path) -> dict[str, Any]:
    path = RunDir(run_dir).config
    if not path.is_file():
        raise OOFError(f"{run_dir}: no config.json (is it a training run folder, weights/<run>?)")
    return json.loads(path.read_text())


def preprocessed_dir(run_dir: str | Path, preprocessed: str | Path | None) -> PreDir:
    """The preprocessed folder given, else the one the run trained on; it must hold a manifest."""
    pre = preprocessed or (run_config(run_dir).get("data") or {}).get("preprocessed") or ""
    if not str(pre) or not PreDir(pre).exists():
        raise OOFError(f"preprocessed folder {str(pre) or '(unset)'} has no manifest.parquet; pass --data PRE")
    return PreDir(pre)


def series_folds(cfg: dict[str, Any], pre_dir: str | Path) -> pl.DataFrame:
    """``SeriesInstanceUID, fold`` of every preprocessed series, as the training run assigned them (the one fold
    function of ``data.folds``, on the same per-series labels)."""
    from ..data.cache import read_index
    from ..data.folds import resolve_folds, series_labels

    pre = PreDir(pre_dir)
    data = cfg.get("data") or {}
    cache_dir = Path(data["cache_dir"]) if data.get("cache_dir") else pre.default_cache
    if CacheDir(cache_dir).index.is_file():  # the series training split, exactly
        series = series_labels(read_index(cache_dir))
    else:
        log.warning("%s: no patch cache index; folds are computed from the preprocessed series", cache_dir)
        labels = read_labels(pre.train_csv, columns=[ID_COL, *LABEL_COLS])
        series = series_labels(read_manifest(pre).select(ID_COL).join(labels, on=ID_COL, how="left"))
    return resolve_folds(series, data.get("folds"), int(data.get("n_folds", 5)), int(data.get("fold_seed", 42)))


def load_preprocessed(pre_dir: str | Path, row: dict[str, Any]) -> tuple[Volume, Volume | None]:
    """Preprocessed volume and head mask of one manifest row (the pipeline resamples them to the model's grid)."""
    from ..io.nifti import read_volume

    pre = PreDir(pre_dir)
    vol = read_volume(pre.root / row["volume"], mmap=False)
    mask = read_volume(pre.root / row["mask"], mmap=False) if row.get("mask") else None
    return vol, mask


def fold_pipeline(run_dir: str | Path, fold: int, cfg: PredictorConfig) -> ScanPipeline:
    """The scan pipeline of one fold's model, with the region finder that never saw that fold when the run has one."""
    try:
        return ScanPipeline(run_dir, cfg, folds=[fold], region_fold=fold).load()
    except WeightsError as e:
        raise OOFError(str(e)) from e


def region_record(uid: str, fold: int, res: ScanResult, finder_saw: bool | None) -> dict[str, Any]:
    box = res.region
    return {ID_COL: uid, "fold": fold, "source": box.source, "spread_mm": box.spread_mm, "reason": box.reason,
            "finder_saw": finder_saw,
            **{f"center_{a}": float(v) for a, v in zip("xyz", box.center)},
            **{f"size_{a}": float(v) for a, v in zip("xyz", box.size_mm)},
            "peaks": json.dumps([[round(float(v), 2) for v in p] + [round(float(q), 4)]
                                 for p, q in zip(res.peaks_world, res.peaks_prob)])}


def run_oof(run_dir: str | Path, preprocessed: str | Path | None = None, folds: list[int] | None = None,
            cfg: PredictorConfig | None = None, out: str | Path | None = None, limit: int | None = None
            ) -> pl.DataFrame:
    """Predict every fold's validation series; write and return the out-of-fold table (see the module docstring).

    ``cfg`` supplies the inference settings (window, TTA, aggregation, crop, checkpoint); its budget is not used.
    ``limit``: at most this many series per fold (a quick look).
    """
    run = RunDir(run_dir)
    cfg = cfg or PredictorConfig()
    train_cfg = run_config(run.root)
    pre = preprocessed_dir(run.root, preprocessed)
    found = run.checkpoints(cfg.checkpoint)
    wanted = folds if folds is not None else list(found)
    missing = [f for f in wanted if f not in found]
    if missing or not wanted:
        raise OOFError(f"{run.root}: no {cfg.checkpoint} checkpoint for fold(s) {missing or wanted}")
    if pre.train_csv.is_file():  # the fallback row and the atlas prior, the same file the kernel gets
        write_prevalence(pre.train_csv, run.prevalence)

    table = series_folds(train_cfg, pre.root).join(read_manifest(pre), on=ID_COL, how="inner")
    rows: list[dict[str, Any]] = []
    regions: list[dict[str, Any]] = []
    for fold in wanted:
        pipeline = fold_pipeline(run.root, fold, cfg)
        seen = getattr(pipeline.locator, "train_series", None)
        val = table.filter(pl.col("fold") == fold).sort(ID_COL)
        if limit is not None:
            val = val.head(limit)
        t0 = time.perf_counter()
        for row in val.iter_rows(named=True):
            vol, mask = load_preprocessed(pre.root, row)
            res = pipeline.predict(vol, mask, want_heatmap=False)
            if res.region is not None:
                regions.append(region_record(row[ID_COL], fold, res, None if seen is None else row[ID_COL] in seen))
            rows.append({ID_COL: row[ID_COL], "fold": fold, **res.row()})
        log.info("fold %d: %d validation series in %.1f s (%s)", fold, val.height, time.perf_counter() - t0,
                 pipeline.name)

    schema = {ID_COL: pl.Utf8, "fold": pl.Int64, **{c: pl.Float64 for c in LABEL_COLS}}
    oof = pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
    out = Path(out) if out else run.oof
    with atomic_path(out) as tmp:
        oof.write_parquet(tmp)
    if regions:
        reg = pl.DataFrame(regions)
        with atomic_path(out.with_name(out.stem + "_regions.parquet")) as tmp:
            reg.write_parquet(tmp)
        summary = region_recall(reg, pre.root)
        log.info("region: %s", summary)
        atomic_write_text(out.parent / (out.stem + "_regions.json"), json.dumps(summary, indent=2) + "\n")
    return oof


def region_recall(regions: pl.DataFrame, pre_dir: str | Path) -> dict[str, Any]:
    """Stage one's metrics: share of the localizers inside the predicted box, box sizes, fallback count, and whether
    the estimate is out-of-fold (``finder_saw_validation``: validation series the finder trained on)."""
    out: dict[str, Any] = {"series": regions.height,
                           "fallback": int(regions["source"].str.starts_with("fallback").sum()),
                           "box_mm_mean": [round(float(regions[f"size_{a}"].mean()), 1) for a in "xyz"],
                           "box_ml_mean": round(float((regions["size_x"] * regions["size_y"] * regions["size_z"])
                                                      .mean()) / 1000.0, 1)}
    saw = regions["finder_saw"].drop_nulls() if "finder_saw" in regions.columns else pl.Series([], dtype=pl.Boolean)
    if saw.len() < regions.height:
        out["estimate"] = ("unknown: stage one's metrics (region finder or vessel segmenter) do not list its "
                           "training series")
        out["finder_saw_validation"] = None
    else:
        n_saw = int(saw.cast(pl.Int64).sum())
        out["finder_saw_validation"] = n_saw
        out["estimate"] = "out-of-fold" if n_saw == 0 else (
            f"optimistic: stage one (region finder or vessel segmenter) trained on {n_saw} of these {regions.height} "
            "series")
    locs = read_localizers(pre_dir)
    if locs.height:
        j = locs.join(regions, on=ID_COL, how="inner")
        inside = pl.all_horizontal(*((pl.col(f"world_{a}") - pl.col(f"center_{a}")).abs() <= pl.col(f"size_{a}") / 2
                                     for a in "xyz"))
        j = j.with_columns(inside.alias("inside"))
        out["localizers"] = j.height
        out["recall"] = round(float(j["inside"].mean()), 4) if j.height else None
        out["missed"] = [f"{r[ID_COL]}: {r['location']}" for r in j.filter(~pl.col("inside")).iter_rows(named=True)]
    return out
