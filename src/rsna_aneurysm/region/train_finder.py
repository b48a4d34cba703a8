"""Train the region finder on the region targets of a preprocessed folder; write ``<run>/region/``.

The coarse views are cut once per series, a little larger than the model's view so that random shifts (the
augmentation that keeps the finder from learning "the region is always at the same place in the view") are plain
crops. Left-right flips mirror the view and the target; intensities get a random gain and offset.

Written: ``region/finder.pt`` (state dict and settings; loads with ``weights_only=True``), ``region/region.json``
(the :class:`~.finder.RegionConfig`, with the classical fallback's offset fitted on the training series),
``region/atlas.parquet`` (the location atlas of the training series) and ``region/finder_metrics.json``.
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
import torch
import torch.nn.functional as F

from ..config import to_dict
from ..constants import ID_COL
from ..io.atomic import atomic_path, atomic_write_parquet, atomic_write_text
from ..layout import REGION_DIR, REGION_FILES, PreDir, read_manifest, read_region_targets
from .finder import (
    FinderConfig,
    RegionConfig,
    RegionFinder,
    RegionLocator,
    extract_view,
    soft_argmax,
    view_to_heat,
)
from .geometry import Grid, head_box

log = logging.getLogger(__name__)

FINDER_FILE = REGION_FILES["finder"]
REGION_FILE = REGION_FILES["config"]
REGION_ATLAS = REGION_FILES["atlas"]


class RegionTrainingError(RuntimeError):
    """Too few series with a region target, or a preprocessed folder without what the finder needs."""


def _load(pre: Path, row: dict[str, Any]):
    from ..io.nifti import read_volume

    vol = read_volume(pre / row["volume"], mmap=False)
    mask = np.asarray(read_volume(pre / row["mask"], mmap=False).array) if row.get("mask") else None
    return vol.with_array(np.asarray(vol.array, dtype=np.float32)), mask


def cut_views(pre: Path, rows: list[dict[str, Any]], cfg: FinderConfig) -> list[dict[str, Any]]:
    """Per series: the enlarged coarse view (float16), its grid, the target centre and extent, the fallback offset."""
    pad = int(np.ceil(cfg.shift_mm / cfg.view_spacing_mm))
    shape = tuple(int(s) + 2 * pad for s in cfg.view_shape)
    out = []
    for r in rows:
        vol, mask = _load(pre, r)
        box = head_box(vol, mask)
        view, grid = extract_view(vol, box, cfg, shape=shape)
        center = np.array([r["center_x"], r["center_y"], r["center_z"]], dtype=np.float64)
        ext = np.array([r["extent_x"], r["extent_y"], r["extent_z"]], dtype=np.float64) \
            if r.get("extent_x") is not None else None
        offset = np.array([center[0] - (box[0][0] + box[1][0]) / 2, center[1] - (box[0][1] + box[1][1]) / 2,
                           center[2] - box[1][2]])
        out.append({"uid": r[ID_COL], "view": view.astype(np.float16), "grid": grid, "center": center,
                    "extent": ext, "offset": offset, "head_box": box, "pad": pad, "fold": r.get("fold", -1)})
    return out


def _batch(items: list[dict[str, Any]], cfg: FinderConfig, rng: np.random.Generator | None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views (B, 1, D, H, W), target heat index (B, 3), log extent (B, 3), extent known (B,)."""
    xs, ts, es, known = [], [], [], []
    for it in items:
        pad = it["pad"]
        shift = rng.integers(-pad, pad + 1, size=3) if rng is not None else np.zeros(3, dtype=np.int64)
        lo = pad + shift
        d, h, w = cfg.view_shape
        x = it["view"][lo[0]:lo[0] + d, lo[1]:lo[1] + h, lo[2]:lo[2] + w].astype(np.float32)
        t = it["grid"].world_to_index(it["center"][None, :])[0] - lo  # view index (k, j, i)
        if rng is not None:
            if rng.random() < cfg.flip_lr:
                x = x[..., ::-1]
                t = t.copy()
                t[2] = (w - 1) - t[2]
            x = x * (1.0 + rng.uniform(-cfg.intensity_jitter, cfg.intensity_jitter)) \
                + rng.uniform(-cfg.intensity_jitter, cfg.intensity_jitter)
        xs.append(np.ascontiguousarray(x))
        ts.append(view_to_heat(t))
        ext = it["extent"]
        es.append(np.log(np.maximum(ext, 1.0) / 10.0) if ext is not None else np.zeros(3))
        known.append(ext is not None)
    return (torch.from_numpy(np.stack(xs))[:, None], torch.tensor(np.stack(ts), dtype=torch.float32),
            torch.tensor(np.stack(es), dtype=torch.float32), torch.tensor(known))


def finder_loss(out: dict[str, torch.Tensor], target: torch.Tensor, log_ext: torch.Tensor, known: torch.Tensor,
                cfg: FinderConfig) -> tuple[torch.Tensor, dict[str, float]]:
    heat = out["heatmap"].float()
    idx, _, prob = soft_argmax(heat)
    cell_mm = 4.0 * cfg.view_spacing_mm
    dist = F.smooth_l1_loss(idx * cell_mm / 10.0, target * cell_mm / 10.0)
    axes = [torch.arange(n, dtype=torch.float32) for n in heat.shape[1:]]
    sig = cfg.heatmap_sigma_mm / cell_mm
    g = [torch.exp(-0.5 * ((a[None, :] - target[:, d:d + 1]) / sig) ** 2) for d, a in enumerate(axes)]
    q = g[0][:, :, None, None] * g[1][:, None, :, None] * g[2][:, None, None, :]
    q = q / q.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    ce = -(q * torch.log(prob.clamp_min(1e-12))).sum(dim=(1, 2, 3)).mean()
    ext = F.l1_loss(out["extent"][known], log_ext[known]) if bool(known.any()) else heat.sum() * 0.0
    loss = dist + 0.1 * ce + ext
    return loss, {"dist": float(dist.detach()), "ce": float(ce.detach()), "extent": float(ext.detach())}


def located_centres(model: RegionFinder, items: list[dict[str, Any]], cfg: RegionConfig) -> dict[str, np.ndarray]:
    """Where the locator (finder, or its fallback when unsure) puts the centre of each item's series."""
    model.eval()
    locator = RegionLocator(cfg, model)
    out = {}
    for it in items:
        d = it["pad"]
        view = it["view"][d:-d or None, d:-d or None, d:-d or None] if d else it["view"]
        grid = Grid(tuple(float(v) for v in it["grid"].index_to_world(np.full((1, 3), float(d)))[0]),
                    it["grid"].spacing, tuple(int(s) for s in cfg.finder.view_shape))
        out[it["uid"]] = locator.decide(*locator.run_finder(view.astype(np.float32), grid), it["head_box"]).center
    return out


def fit_box(model: RegionFinder, pre: Path, items: list[dict[str, Any]], cfg: RegionConfig
            ) -> tuple[float, float, float]:
    """box_mm widened (in 8 mm steps, up to max_box_mm) to hold every training localizer around its series'
    predicted centre with cfg.box_margin_mm to spare."""
    box = np.asarray(cfg.box_mm, dtype=np.float64)
    path = PreDir(pre).localizers
    if not path.is_file():
        return tuple(float(v) for v in box)
    locs = pl.read_parquet(path).filter((pl.col("status") == "ok") & pl.col("world_x").is_not_null())
    centres = located_centres(model, items, cfg)
    offs = [np.array([r["world_x"], r["world_y"], r["world_z"]]) - centres[r[ID_COL]]
            for r in locs.iter_rows(named=True) if r[ID_COL] in centres]
    if not offs:
        return tuple(float(v) for v in box)
    need = 2.0 * (np.abs(np.stack(offs)).max(axis=0) + cfg.box_margin_mm)
    need = np.ceil(need / 8.0) * 8.0
    fitted = np.minimum(np.maximum(box, need), np.asarray(cfg.max_box_mm, dtype=np.float64))
    if np.any(need > np.asarray(cfg.max_box_mm)):
        log.warning("region box: training aneurysms need %s mm, capped at max_box_mm %s", need.tolist(),
                    list(cfg.max_box_mm))
    log.info("region box fitted on %d training localizers: %s mm", len(offs), fitted.tolist())
    return tuple(float(v) for v in fitted)


@torch.no_grad()
def evaluate_finder(model: RegionFinder, items: list[dict[str, Any]], cfg: FinderConfig) -> dict[str, Any]:
    """Centre error (mm) and spread of the finder on un-augmented views."""
    model.eval()
    errs, spreads, per = [], [], {}
    for i in range(0, len(items), cfg.batch_size):
        chunk = items[i:i + cfg.batch_size]
        x, t, _, _ = _batch(chunk, cfg, None)
        idx, std, _ = soft_argmax(model(x)["heatmap"])
        cell = 4.0 * cfg.view_spacing_mm
        errs += (torch.linalg.norm(idx - t, dim=1) * cell).tolist()
        spreads += (std.pow(2).mean(dim=1).sqrt() * cell).tolist()
        per.update({it["uid"]: [round(e, 2), round(s, 2)] for it, e, s in zip(chunk, errs[-len(chunk):],
                                                                             spreads[-len(chunk):])})
    return {"n": len(errs), "center_error_mm_median": float(np.median(errs)) if errs else None,
            "center_error_mm_max": float(np.max(errs)) if errs else None,
            "spread_mm_median": float(np.median(spreads)) if spreads else None, "per_series": per}


def train_region_finder(pre_dir: str | Path, run_dir: str | Path, cfg: RegionConfig | None = None,
                        folds: pl.DataFrame | None = None, holdout_fold: int = -1,
                        out_dir: str | Path | None = None) -> dict[str, Any]:
    """Train the finder on every series with a target (except fold ``holdout_fold`` of ``folds``, validated on),
    into ``out_dir`` (default ``<run>/region``); its metrics list the series it trained on."""
    cfg = cfg or RegionConfig()
    fcfg = cfg.finder
    pre, out = Path(pre_dir), Path(out_dir) if out_dir is not None else Path(run_dir) / REGION_DIR
    targets = read_region_targets(pre)
    manifest = read_manifest(pre)
    table = targets.join(manifest.select(ID_COL, "volume", "mask"), on=ID_COL, how="inner")
    if folds is not None:
        table = table.join(folds.select(ID_COL, "fold"), on=ID_COL, how="left").with_columns(
            pl.col("fold").fill_null(-1))
    else:
        table = table.with_columns(pl.lit(-1).alias("fold"))
    train_rows = table.filter((pl.col("fold") != holdout_fold) | (pl.lit(holdout_fold) < 0)).to_dicts()
    val_rows = table.filter(pl.col("fold") == holdout_fold).to_dicts() if holdout_fold >= 0 else []
    if len(train_rows) < 2:
        raise RegionTrainingError(f"{pre}: {len(train_rows)} training series with a region target; need 2 or more "
                                  "(run `rsna-aneurysm region targets`, with --data for synthetic truth)")
    if fcfg.threads:
        torch.set_num_threads(fcfg.threads)
    t0 = time.perf_counter()
    train_items = cut_views(pre, train_rows, fcfg)
    val_items = cut_views(pre, val_rows, fcfg)
    offsets = np.stack([it["offset"] for it in train_items])
    cfg = replace(cfg, fallback_offset_mm=tuple(float(v) for v in np.median(offsets, axis=0)))
    t_views = time.perf_counter() - t0

    torch.manual_seed(fcfg.seed)
    rng = np.random.default_rng(fcfg.seed)
    model = RegionFinder(fcfg.channels)
    opt = torch.optim.AdamW(model.parameters(), lr=fcfg.lr, weight_decay=fcfg.weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(train_items) / fcfg.batch_size)))
    total = steps_per_epoch * fcfg.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=fcfg.lr, total_steps=total, pct_start=0.15)
    history = []
    t1 = time.perf_counter()
    for epoch in range(fcfg.epochs):
        model.train()
        order = rng.permutation(len(train_items))
        parts_sum: dict[str, float] = {}
        for s in range(steps_per_epoch):
            pick = order[s * fcfg.batch_size:(s + 1) * fcfg.batch_size]
            if len(pick) < 2:  # batch norm needs two samples
                pick = rng.choice(len(train_items), 2, replace=False)
            x, t, e, k = _batch([train_items[i] for i in pick], fcfg, rng)
            loss, parts = finder_loss(model(x), t, e, k, fcfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for key, v in parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + v / steps_per_epoch
        history.append({"epoch": epoch + 1, **parts_sum})
    t_train = time.perf_counter() - t1
    if cfg.fit_box:
        cfg = replace(cfg, box_mm=fit_box(model, pre, train_items, cfg))
    metrics = {"train": evaluate_finder(model, train_items, fcfg),
               "val": evaluate_finder(model, val_items, fcfg) if val_items else None,
               "holdout_fold": holdout_fold, "n_train": len(train_items), "n_val": len(val_items),
               "views_s": round(t_views, 2), "train_s": round(t_train, 2), "history": history[-3:],
               "fallback_offset_mm": list(cfg.fallback_offset_mm), "box_mm": list(cfg.box_mm),
               "train_series": sorted(str(r[ID_COL]) for r in train_rows)}
    out.mkdir(parents=True, exist_ok=True)
    state = {"state_dict": model.state_dict(), "finder": json.loads(json.dumps(to_dict(fcfg))), "kind": "region_finder"}
    with atomic_path(out / FINDER_FILE) as tmp:
        torch.save(state, tmp)
    atomic_write_text(out / REGION_FILE, json.dumps(to_dict(cfg), indent=2) + "\n")
    if PreDir(pre).region_atlas.is_file():
        train_uids = {r[ID_COL] for r in train_rows}
        atlas = pl.read_parquet(PreDir(pre).region_atlas).filter(pl.col(ID_COL).is_in(list(train_uids)))
        atomic_write_parquet(atlas, out / REGION_ATLAS)
    atomic_write_text(out / "finder_metrics.json", json.dumps(metrics, indent=2) + "\n")
    log.info("region finder: %d training series, centre error median %.1f mm (train)%s; %.0f s",
             len(train_items), metrics["train"]["center_error_mm_median"],
             f", {metrics['val']['center_error_mm_median']:.1f} mm (fold {holdout_fold})" if val_items else "",
             t_views + t_train)
    return metrics




def train_region_finders_per_fold(pre_dir: str | Path, run_dir: str | Path, folds: pl.DataFrame,
                                  cfg: RegionConfig | None = None) -> dict[int, dict[str, Any]]:
    """One finder per fold k, trained without fold k's series, into ``<run>/region/fold_<k>/``: out-of-fold
    prediction of fold k then uses a stage one that never saw its series (the kernel keeps ``<run>/region``)."""
    out: dict[int, dict[str, Any]] = {}
    for fold in sorted(int(f) for f in folds["fold"].unique().to_list() if f is not None and f >= 0):
        out[fold] = train_region_finder(pre_dir, run_dir, cfg, folds, holdout_fold=fold,
                                        out_dir=Path(run_dir) / REGION_DIR / f"fold_{fold}")
    return out


__all__ = ["train_region_finder", "train_region_finders_per_fold", "cut_views", "evaluate_finder", "finder_loss",
           "REGION_DIR", "FINDER_FILE", "REGION_FILE", "REGION_ATLAS", "RegionTrainingError"]
