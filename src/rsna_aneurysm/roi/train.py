"""Train the vessel-guided ROI classifier: ROI cache, k-fold training, checkpoints the scan pipeline reads.

``build_cache`` runs :func:`~.data.build_roi` (segmenter, vessel locator, ROI cut) over every ok series of a
preprocessed folder and writes ``<cache>/<uid>.npz`` plus ``index.parquet`` (resumable: an intact entry is kept).
``train_roi`` trains one classifier per fold on it: the segmenter's weights as initialisation (``pretrained``; off
for the ablation), AdamW with a one-cycle schedule, bf16 autocast where the device computes it, random crops inside
the cached jitter margin and left-right flips that swap the Left/Right labels and vessel channels, BCE on the 14
labels (Aneurysm Present weighted ``ap_weight``) plus the auxiliary sphere loss (BCE + soft Dice against balls of
``sphere_radius_vox`` around each aneurysm). After every epoch the held-out fold is scored with the competition
metric; ``fold_<k>/best.pt`` keeps the best epoch and ``last.pt`` the latest with the optimiser (a rerun with the
same settings resumes). Checkpoints use the kit's format (``train.checkpoint``), loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from ..config import from_dict, require, to_dict
from ..constants import ANEURYSM_PRESENT, ID_COL, LABEL_COLS
from ..io.atomic import atomic_path, atomic_write_csv, atomic_write_text
from ..io.nifti import read_volume
from ..io.tables import read_labels
from ..layout import ROI_INDEX, PreDir, RunDir, read_localizers, read_manifest, region_files
from ..runtime import PRECISIONS, autocast, resolve_device, resolve_precision
from ..train.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from ..vessels.locator import VesselLocator, VesselRegionConfig
from ..vessels.model import transfer_weights
from ..vessels.segmenter import KitSegmenter, read_segmenter
from .data import RoiConfig, RoiSample, build_roi, load_samples, sample_input
from .model import RoiClassifier, predict_logits

log = logging.getLogger(__name__)

MODEL_NAME = "roi_classifier"


@dataclass
class RoiTrainConfig:
    """Settings of ``rsna-aneurysm roi cache`` and ``roi train`` (``configs/roi_cpu.json``, ``roi_gpu.json``)."""

    roi: RoiConfig = field(default_factory=RoiConfig)
    region: VesselRegionConfig = field(default_factory=VesselRegionConfig)
    dilate_vox: int = 3  # grow each vessel region by this before pooling (the sac sits beside the vessel)
    pretrained: bool = True  # initialise from the segmenter (segmentation pretraining); false: from scratch
    epochs: int = 16
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    ap_weight: float = 2.0  # BCE weight of Aneurysm Present against 1 for each location
    sphere_weight: float = 1.0  # auxiliary sphere loss weight (0: off)
    sphere_radius_vox: float = 5.0
    flip: bool = True  # left-right flip augmentation (labels and vessel channels swapped)
    tta: bool = True  # validation with the mirrored pass too
    n_folds: int = 4
    folds: list[int] | None = None  # folds to train; null: all
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int = 1  # cache building processes
    threads: int | None = None

    def __post_init__(self) -> None:
        require(self.epochs >= 1 and self.batch_size >= 1, "epochs", "epochs and batch_size must be positive")
        require(self.precision in PRECISIONS, "precision", f"one of {list(PRECISIONS)}, got {self.precision!r}")
        require(self.n_folds >= 2, "n_folds", f"needs at least 2 folds, got {self.n_folds}")


# ---------------------------------------------------------------------------------------------------------- cache


def segmenter_path(weights: str | Path) -> Path:
    """``<weights>/vessels/segmenter.pt`` of a run folder (``layout.RunDir.segmenter``)."""
    return RunDir(weights).segmenter


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if Path(path).is_file() else ""


def _cache_key(cfg: RoiTrainConfig, seg_path: Path, weights: Path) -> str:
    """What the cached ROIs depend on: ROI and region settings, the segmenter and the fallback finder (digests)."""
    read_segmenter(seg_path)  # a clear error for a missing or foreign segmenter, before any work
    files = region_files(weights) or {}
    return json.dumps({"roi": to_dict(cfg.roi), "region": to_dict(cfg.region), "segmenter": _digest(seg_path),
                       "finder": _digest(files["finder"]) if "finder" in files else ""}, sort_keys=True)


def _cache_one(args: tuple[str, str, str, str, dict[str, Any], list[list[float]], list[float]]) -> dict[str, Any]:
    uid, vol_path, mask_path, weights, cfg_dict, points, labels = args
    cfg = from_dict(RoiTrainConfig, cfg_dict)
    seg, fallback = _stage_one_cached(weights)
    vol = read_volume(vol_path, mmap=False)
    vol.meta["series_uid"] = uid
    mask = np.asarray(read_volume(mask_path).array) if mask_path else None
    # The locator the kernel builds: segmenter, then the run's region finder, then the head geometry.
    locator = VesselLocator(cfg.region, seg, fallback)
    roi = build_roi(vol, mask, seg, locator, cfg.roi, pad_vox=cfg.roi.jitter_vox)
    centers = roi.grid.world_to_index(np.asarray(points, dtype=np.float64).reshape(-1, 3)) if points else \
        np.zeros((0, 3))
    return {"uid": uid, "image": roi.x[0].astype(np.float16), "vessels": np.round(roi.x[4:] * 255).astype(np.uint8),
            "ref": roi.x[1:4, 0, 0, 0], "grid_origin": np.asarray(roi.grid.origin), "spacing": roi.grid.spacing[0],
            "centers": np.asarray(centers, np.float32).reshape(-1, 3), "labels": np.asarray(labels, np.float32),
            "source": roi.box.source, "reason": roi.box.reason,
            "inside": [bool(v) for v in roi.grid.contains(np.asarray(points).reshape(-1, 3))] if points else []}


def _one_thread() -> None:
    """Pool workers share the cores: one torch thread each (the main process keeps its own setting)."""
    torch.set_num_threads(1)


_STAGE_ONE: dict[str, tuple[KitSegmenter, Any]] = {}


def _stage_one_cached(weights: str) -> tuple[KitSegmenter, Any]:
    """(segmenter, fallback locator) of a vessel-ROI run folder, loaded once per process."""
    from .stage import fallback_locator

    if weights not in _STAGE_ONE:
        _STAGE_ONE[weights] = (KitSegmenter.load(segmenter_path(weights), device="cpu"),
                               fallback_locator(Path(weights), None, "cpu")[0])
    return _STAGE_ONE[weights]


def build_cache(pre_dir: str | Path, weights: str | Path, cache_dir: str | Path, cfg: RoiTrainConfig,
                uids: list[str] | None = None) -> pl.DataFrame:
    """ROI cache of the labelled ok series of ``pre_dir`` (or ``uids``) with the segmenter of ``weights``;
    returns the index (one row per series: file, labels, region source, whether each aneurysm is inside)."""
    pre = PreDir(pre_dir)
    seg_path = segmenter_path(weights)
    key = _cache_key(cfg, seg_path, Path(weights))
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    key_file = cache / "cache_key.json"
    if key_file.is_file() and key_file.read_text() != key:
        log.warning("%s was built with other ROI settings or another segmenter: rebuilding every entry", cache)
        for p in cache.glob("*.npz"):
            p.unlink()
    atomic_write_text(key_file, key)
    man = read_manifest(pre)
    labels = read_labels(pre.train_csv, columns=[ID_COL, *LABEL_COLS])
    man = man.join(labels, on=ID_COL, how="inner")
    if uids is not None:
        man = man.filter(pl.col(ID_COL).is_in(uids))
    loc = read_localizers(pre)
    pts = {u: g.select("world_x", "world_y", "world_z").to_numpy().tolist()
           for (u,), g in loc.group_by(ID_COL)} if loc.height else {}
    jobs, rows = [], []
    cfg_dict = to_dict(cfg)
    for r in man.iter_rows(named=True):
        uid = r[ID_COL]
        out = cache / f"{uid}.npz"
        row = {ID_COL: uid, "file": out.name, "labels": [float(r[c]) for c in LABEL_COLS]}
        if out.is_file():
            try:
                with np.load(out) as z:
                    row |= {"source": str(z["source"]), "n_inside": int(z["inside"].sum()),
                            "n_points": int(z["inside"].size)}
                rows.append(row)
                continue
            except Exception:  # noqa: BLE001 - a torn entry is rebuilt
                out.unlink()
        jobs.append((uid, str(pre.root / r["volume"]), str(pre.root / r["mask"]) if r.get("mask") else "",
                     str(weights), cfg_dict, pts.get(uid, []), row["labels"]))
    t0 = time.perf_counter()

    def _store(res: dict[str, Any]) -> None:
        path = cache / f"{res['uid']}.npz"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, image=res["image"], vessels=res["vessels"], ref=res["ref"],
                         grid_origin=res["grid_origin"], spacing=res["spacing"], centers=res["centers"],
                         labels=res["labels"], source=res["source"], reason=res["reason"],
                         inside=np.asarray(res["inside"], bool))
        rows.append({ID_COL: res["uid"], "file": path.name, "labels": res["labels"].tolist(),
                     "source": res["source"], "n_inside": int(sum(res["inside"])),
                     "n_points": len(res["inside"])})

    if cfg.workers > 1 and len(jobs) > 1:
        import multiprocessing

        # spawn, never fork: the parent holds torch's thread pool, and a forked child can hang on it.
        with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_one_thread) as pool:
            for res in pool.map(_cache_one, jobs):
                _store(res)
    else:
        for job in jobs:
            _store(_cache_one(job))
    if jobs:
        log.info("ROI cache: %d series in %.1f s (%.2f s each)", len(jobs), time.perf_counter() - t0,
                 (time.perf_counter() - t0) / len(jobs))
    index = pl.DataFrame(rows).sort(ID_COL)
    index.write_parquet(cache / ROI_INDEX)
    return index


def roi_folds(pre_dir: str | Path, folds_path: str | Path | None, n_folds: int, fold_seed: int) -> pl.DataFrame:
    """``SeriesInstanceUID, fold`` of the preprocessed series: the folds table when given, else the kit's one fold
    function (patient-grouped, multilabel-stratified) on the series labels, as ``oof`` recomputes them from the
    run's ``config.json``."""
    from ..data.folds import resolve_folds, series_labels

    pre = PreDir(pre_dir)
    labels = read_labels(pre.train_csv, columns=[ID_COL, *LABEL_COLS])
    series = series_labels(read_manifest(pre).select(ID_COL).join(labels, on=ID_COL, how="left"))
    return resolve_folds(series, folds_path, n_folds, fold_seed)


# ------------------------------------------------------------------------------------------------------- training


def roi_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, sphere: torch.Tensor, cfg: RoiTrainConfig
             ) -> torch.Tensor:
    logits = out["logits"].float()
    w = torch.ones(len(LABEL_COLS), device=logits.device)
    w[LABEL_COLS.index(ANEURYSM_PRESENT)] = cfg.ap_weight
    bce = (F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * w).sum(1).mean() / w.sum()
    if cfg.sphere_weight <= 0:
        return bce
    s = out["heatmap"].float()[:, 0]
    sb = F.binary_cross_entropy_with_logits(s, sphere)
    p = torch.sigmoid(s)
    dice = 1.0 - (2 * (p * sphere).sum() + 1.0) / (p.sum() + sphere.sum() + 1.0)
    return bce + cfg.sphere_weight * (sb + dice)


def model_for(cfg: RoiTrainConfig, seg_ckpt: dict[str, Any]) -> tuple[RoiClassifier, dict[str, Any]]:
    unet = seg_ckpt["unet"]
    kwargs = {"features": list(unet["features"]), "blocks": list(unet["blocks"]),
              "decoder_convs": int(unet["decoder_convs"]), "dilate_vox": int(cfg.dilate_vox)}
    return RoiClassifier(**kwargs), kwargs


def checkpoint_meta(cfg: RoiTrainConfig, kwargs: dict[str, Any], seg_ckpt: dict[str, Any], fold: int
                    ) -> dict[str, Any]:
    """Everything of a fold checkpoint but the weights (the kit's checkpoint format; ``weights_only`` loadable)."""
    return {"format": FORMAT, "model": {"name": MODEL_NAME, "kwargs": kwargs}, "config": to_dict(cfg),
            "label_cols": list(LABEL_COLS), "preprocessing": seg_ckpt.get("preprocessing", {}),
            "patch": {"size": list(cfg.roi.shape), "spacing_mm": float(cfg.roi.spacing_mm)},
            "roi": to_dict(cfg.roi), "region": to_dict(cfg.region), "pretrained": bool(cfg.pretrained),
            "fold": int(fold), "torch_version": str(torch.__version__)}


def write_roi_json(out_dir: str | Path, cfg: RoiTrainConfig) -> Path:
    """``roi.json``: the ROI and region settings the pipeline reads (and the marker of a vessel-ROI folder)."""
    return atomic_write_text(RunDir(out_dir).roi_json, json.dumps(
        {"roi": to_dict(cfg.roi), "region": to_dict(cfg.region), "config": to_dict(cfg)}, indent=2) + "\n")


def evaluate(model: RoiClassifier, samples: list[RoiSample], cfg: RoiTrainConfig, device: torch.device,
             precision: str) -> tuple[np.ndarray, Any]:
    """(probabilities (N, 14), metrics) on centred windows, with TTA when configured."""
    from ..evaluate.metric import parts_from_arrays

    model.eval()
    probs = []
    centre = np.full(3, cfg.roi.jitter_vox)
    for s in samples:
        x, _, _ = sample_input(s, cfg, centre, False)
        with autocast(device, precision):
            p = predict_logits(model, torch.from_numpy(x)[None].to(device), cfg.tta)
        probs.append(p[0].float().cpu().numpy())
    probs = np.stack(probs) if probs else np.zeros((0, len(LABEL_COLS)))
    y = np.stack([s.labels for s in samples]) if samples else np.zeros((0, len(LABEL_COLS)))
    return probs, parts_from_arrays(y, probs)


def train_roi(cache_dir: str | Path, weights: str | Path, out_dir: str | Path, cfg: RoiTrainConfig,
              folds_table: pl.DataFrame) -> dict[int, dict[str, Any]]:
    """Train the ROI classifier per fold into ``out_dir`` (``fold_<k>/best.pt``, ``last.pt``, ``metrics.csv``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    index = pl.read_parquet(Path(cache_dir) / ROI_INDEX)
    index = index.join(folds_table.select(ID_COL, "fold"), on=ID_COL, how="inner")
    if index.height < 4:
        raise ValueError(f"{cache_dir}: only {index.height} cached series with a fold; need at least 4")
    seg_ckpt = read_segmenter(segmenter_path(weights))
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    run = RunDir(out_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    all_folds = sorted(index["fold"].unique().to_list())
    folds = cfg.folds if cfg.folds is not None else all_folds
    results = {}
    for fold in folds:
        tr = index.filter(pl.col("fold") != fold)[ID_COL].to_list()
        va = index.filter(pl.col("fold") == fold)[ID_COL].to_list()
        results[fold] = _train_fold(fold, load_samples(cache_dir, tr), load_samples(cache_dir, va), cfg, seg_ckpt,
                                    run, device, precision)
    return results


def _train_fold(fold: int, train: list[RoiSample], val: list[RoiSample], cfg: RoiTrainConfig,
                seg_ckpt: dict[str, Any], run: RunDir, device: torch.device, precision: str) -> dict[str, Any]:
    torch.manual_seed(cfg.seed + fold)
    rng = np.random.default_rng(cfg.seed + 100 * fold)
    model, kwargs = model_for(cfg, seg_ckpt)
    transfer = None
    if cfg.pretrained:
        transfer = transfer_weights(model, seg_ckpt["state_dict"])
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, math.ceil(len(train) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=0.15)
    folder = run.fold_dir(fold)
    folder.mkdir(parents=True, exist_ok=True)
    resume_key = json.dumps({k: v for k, v in to_dict(cfg).items() if k not in ("device", "threads", "workers",
                                                                            "folds")}, sort_keys=True)
    history: list[dict[str, Any]] = []
    start, best = 0, -1.0
    last_path = folder / "last.pt"
    if last_path.is_file():
        state = load_checkpoint(last_path)
        if state.get("resume_key") == resume_key:
            model.load_state_dict(state["state_dict"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start, best, history = int(state["epoch"]) + 1, float(state["best"]), list(state["history"])
            log.info("fold %d: resuming the ROI classifier at epoch %d", fold, start)
    meta = checkpoint_meta(cfg, kwargs, seg_ckpt, fold)
    pad = cfg.roi.jitter_vox
    for epoch in range(start, cfg.epochs):
        model.train()
        t0, losses = time.perf_counter(), []
        order = rng.permutation(len(train))
        for b in range(steps):
            batch = [train[i] for i in order[b * cfg.batch_size:(b + 1) * cfg.batch_size]]
            if not batch:
                continue
            xs, ys, ss = zip(*(sample_input(s, cfg, rng.integers(0, 2 * pad + 1, size=3),
                                            cfg.flip and bool(rng.random() < 0.5)) for s in batch))
            x = torch.from_numpy(np.stack(xs)).to(device)
            y = torch.from_numpy(np.stack(ys)).to(device)
            sph = torch.from_numpy(np.stack(ss)).to(device)
            with autocast(device, precision):
                out = model(x)
            loss = roi_loss(out, y, sph, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        train_s = time.perf_counter() - t0
        row: dict[str, Any] = {"epoch": epoch, "train_loss": float(np.mean(losses)), "train_s": train_s,
                               "rois_per_s": len(train) / max(train_s, 1e-9)}
        if val:
            _, m = evaluate(model, val, cfg, device, precision)
            row |= {"score": m.score, "auc_ap": m.aneurysm_auc, "partial": m.partial}
            score = m.score if m.score is not None and math.isfinite(m.score) else -1.0
            if score > best:
                best = score
                save_checkpoint(meta | {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                        "metrics": {k: v for k, v in row.items()}, "epoch": epoch,
                                        "transfer": transfer and {k: len(v) for k, v in transfer.items()}},
                                folder / "best.pt")
        history.append(row)
        log.info("roi fold %d epoch %d: %s", fold, epoch, {k: (round(v, 4) if isinstance(v, float) else v)
                                                             for k, v in row.items() if k != "epoch"})
        save_checkpoint(meta | {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
                                "best": best, "history": history, "resume_key": resume_key}, last_path)
        atomic_write_csv(pl.DataFrame(history), folder / "metrics.csv")
    if not (folder / "best.pt").is_file():  # no validation series: the last epoch is the model
        save_checkpoint(meta | {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                "metrics": history[-1] if history else {}, "epoch": cfg.epochs - 1},
                        folder / "best.pt")
    return {"best_score": best, "history": history, "n_train": len(train), "n_val": len(val)}


def link_stage_one(out_dir: str | Path, weights: str | Path) -> None:
    """Copy ``<weights>/vessels/segmenter.pt`` into the ROI run (unless it is that run)."""
    import shutil

    out = Path(out_dir)
    dst = RunDir(out).segmenter
    dst.parent.mkdir(parents=True, exist_ok=True)
    src = segmenter_path(weights)
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)


def train_roi_run(pre_dir: str | Path, segmenter_run: str | Path, out_dir: str | Path, cfg: RoiTrainConfig,
                  cache_dir: str | Path | None = None, folds_table: str | Path | None = None,
                  folds: list[int] | None = None, n_folds: int | None = None,
                  region_from: str | Path | None = None) -> dict[int, dict[str, Any]]:
    """The whole ``roi train`` command: cache, folds, training, and the files that make ``out_dir`` a vessel-ROI
    weights folder (see ``roi/cli.py``)."""
    import dataclasses

    from ..train.checkpoint import read_preprocessing

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if n_folds is not None:
        cfg = dataclasses.replace(cfg, n_folds=int(n_folds))
    if folds is not None:
        cfg = dataclasses.replace(cfg, folds=list(folds))
    if not segmenter_path(segmenter_run).is_file():
        raise FileNotFoundError(f"{segmenter_path(segmenter_run)}: no segmenter (rsna-aneurysm vessels train)")
    link_stage_one(out, segmenter_run)
    if region_from:
        link_region(out, region_from)
    cache = Path(cache_dir) if cache_dir else out / "roi_cache"
    index = build_cache(pre_dir, out, cache, cfg)
    n_in = int(index["n_inside"].sum()) if "n_inside" in index.columns else 0
    n_pts = int(index["n_points"].sum()) if "n_points" in index.columns else 0
    log.info("ROI cache: %d series; %d of %d aneurysms inside their ROI; regions %s", index.height, n_in, n_pts,
             dict(index.group_by("source").len().rows()) if "source" in index.columns else {})
    table = roi_folds(pre_dir, folds_table, cfg.n_folds, cfg.seed)
    results = train_roi(cache, out, out, cfg, table)
    write_roi_json(out, cfg)
    # oof and pipelines recompute the folds from this (cache_dir has no patch index, so from the series labels).
    atomic_write_text(out / "config.json", json.dumps({
        "model": {"name": MODEL_NAME}, "kind": "vessel_roi",
        "data": {"preprocessed": str(Path(pre_dir)), "cache_dir": str(cache),
                 "folds": str(folds_table) if folds_table else None, "n_folds": cfg.n_folds,
                 "fold_seed": cfg.seed},
        "preprocessing": read_preprocessing(pre_dir), "roi": to_dict(cfg)}, indent=2) + "\n")
    # The fallback row: each label's share of the training series, as ``oof`` and ``package`` write it.
    labels = read_labels(PreDir(pre_dir).train_csv, columns=list(LABEL_COLS))
    atomic_write_text(RunDir(out).prevalence, json.dumps(
        {c: float(labels[c].cast(pl.Float64).mean()) for c in LABEL_COLS}, indent=2) + "\n")
    summary = {"cache": {"series": index.height, "aneurysms": n_pts, "inside_roi": n_in},
               "folds": {str(k): {kk: v[kk] for kk in ("best_score", "n_train", "n_val")}
                         for k, v in results.items()}}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return results


def link_region(out_dir: str | Path, run: str | Path) -> None:
    """Copy ``<run>/region/`` (the region finder) into the ROI run, as the vessel locator's fallback."""
    import shutil

    src = Path(run) / "region"
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no region finder to copy (rsna-aneurysm region train)")
    dst = Path(out_dir) / "region"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def untrained_roi_run(run_dir: str | Path, cfg: RoiTrainConfig, seg_cfg: Any = None,
                      preprocessing: dict[str, Any] | None = None, folds: tuple[int, ...] = (0,),
                      seed: int = 0) -> Path:
    """A vessel-ROI weights folder of randomly initialised networks (benchmarks and tests: timing and plumbing do
    not depend on the weights): segmenter of ``seg_cfg`` (default ``SegmenterConfig()``), one classifier per fold,
    ``roi.json``, ``prevalence.json`` (0.1 everywhere)."""
    from ..vessels.model import IN_CHANNELS, build_unet
    from ..vessels.segmenter import checkpoint_payload
    from ..vessels.train import SegmenterConfig
    from ..vessels.types import N_VESSEL_CLASSES

    run = Path(run_dir)
    seg_cfg = seg_cfg or SegmenterConfig()
    pre = preprocessing if preprocessing is not None else {"spacing": [1.0, 1.0, 1.0], "mask": "head"}
    torch.manual_seed(seed)
    seg = checkpoint_payload(build_unet(IN_CHANNELS, N_VESSEL_CLASSES, seg_cfg.unet), seg_cfg.unet,
                             seg_cfg.spacing_mm, seg_cfg.patch, to_dict(seg_cfg), {}, 0, pre)
    save_checkpoint(seg, segmenter_path(run))
    for fold in folds:
        torch.manual_seed(seed + 1 + fold)
        model, kwargs = model_for(cfg, seg)
        save_checkpoint(checkpoint_meta(cfg, kwargs, seg, fold) | {"state_dict": model.state_dict(), "epoch": 0,
                                                                   "metrics": {}}, RunDir(run).checkpoint(fold))
    write_roi_json(run, cfg)
    atomic_write_text(RunDir(run).prevalence, json.dumps({c: 0.1 for c in LABEL_COLS}) + "\n")
    return run
