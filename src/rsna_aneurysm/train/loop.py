"""The training loop: one fold from patches to ``best.pt``, readable top to bottom.

``train_fold`` builds (or reuses) the patch cache, splits patches by fold, then per epoch: augment on the device,
forward under autocast (bf16/fp16 on CUDA, fp32 on CPU), loss, backward (with a scaler for fp16), clip, AdamW step,
warm-up/cosine learning rate; validates on the held-out fold's patches; logs the metrics CSV and curves; keeps
``best.pt`` (by the monitored score) and ``last.pt`` (everything needed to resume); stops early on a plateau.
Every random draw is seeded from (seed, epoch, rank), so a resumed run ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import save_config, to_dict
from ..io.atomic import atomic_write_text
from ..layout import BEST_CKPT, LAST_CKPT, METRICS_CSV, RunDir
from ..models.registry import create_model
from ..runtime import autocast
from .augment import BatchAugment
from .checkpoint import (
    CheckpointError,
    config_mismatch,
    fold_dir,
    load_checkpoint,
    load_init_weights,
    model_payload,
    read_preprocessing,
    save_checkpoint,
)
from .config import TrainConfig
from .data import make_loaders, prepare_index
from .distributed import DistInfo, all_gather_objects, barrier, cleanup, init_distributed, unwrap
from .history import plot_curves, write_metrics_csv
from .losses import build_loss
from .metrics import patch_metrics
from .runtime import StopRequest, agree, progress_enabled, train_amp_dtype, train_device
from .validate import HIGHER_IS_BETTER, better, evaluate, to_device

log = logging.getLogger(__name__)

StepHook = Callable[[dict[str, Any]], bool | None]


def lr_lambda(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and normalisation weights (1-D parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _fresh_state() -> dict[str, Any]:
    """The resumable progress of a fold: position, best score so far, history, and mid-epoch random state."""
    return {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": None, "best_epoch": -1, "bad_epochs": 0,
            "history": [], "done": False, "accum": None, "rng": None}


@dataclass
class _FoldRun:
    """Everything one fold's training works with, built by ``_setup`` and ``_build_model``, passed to each step."""

    cfg: TrainConfig
    fold: int
    info: DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    progress: bool
    out: Path
    cfg_dict: dict[str, Any]
    preprocessing: dict[str, Any]
    train_loader: DataLoader
    val_loader: DataLoader
    sampler: Any
    model: torch.nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
    scaler: torch.amp.GradScaler | None = None
    loss_fn: Callable | None = None
    augment: BatchAugment | None = None
    state: dict[str, Any] = field(default_factory=_fresh_state)
    aug_gen: torch.Generator | None = None  # this epoch's augmentation draws
    accum: dict[str, float] | None = None  # this epoch's running training losses on this rank

    @property
    def last_path(self) -> Path:
        return self.out / LAST_CKPT

    @property
    def steps(self) -> int:
        return self.sampler.steps


def train_fold(cfg: TrainConfig, fold: int, info: DistInfo | None = None, resume: bool = True,
               on_step: StepHook | None = None, index: pl.DataFrame | None = None) -> dict[str, Any]:
    """Train one fold; returns a summary (best epoch and metrics). ``on_step`` may return True to stop (as SIGINT).

    With ``resume``, an existing ``last.pt`` of the same setup continues exactly where it stopped (a finished fold
    returns at once); otherwise the fold starts over.
    """
    run = _setup(cfg, fold, info, index)
    _build_model(run)
    _load_init_weights(run, resume)
    if resume and run.last_path.exists() and _resume(run):
        log.info("fold %d: already finished (%s); nothing to do", fold, run.last_path)
        return _summary(fold, run.state, run.out)
    if run.info.enabled:
        run.model = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if run.info.is_main:
        run.out.mkdir(parents=True, exist_ok=True)
    with StopRequest() as stop:
        while run.state["epoch"] < cfg.epochs and not run.state["done"]:
            epoch = _begin_epoch(run)
            t0, train_seconds = _train_epoch(run, stop, on_step)
            metrics = _validate(run)
            row = _epoch_row(run, epoch, metrics, train_seconds, t0)
            improved, stop_early = _end_epoch(run, row, metrics[cfg.monitor])
            _log_epoch(run, epoch, row, improved)
            _write_epoch_outputs(run, epoch, row, improved)
            _save_last(run)
            if stop_early:
                log.info("fold %d: no improvement of %s for %d epochs: stopping early", fold, cfg.monitor,
                         cfg.patience)
    barrier(run.info)
    return _summary(fold, run.state, run.out)


def _setup(cfg: TrainConfig, fold: int, info: DistInfo | None, index: pl.DataFrame | None) -> _FoldRun:
    """Runtime (process group, threads, device, precision) and data (patch index, this fold's loaders)."""
    info = info or init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = train_device(cfg, info)
    amp_dtype = train_amp_dtype(cfg, device)
    progress = progress_enabled(cfg, info)
    out = fold_dir(Path(cfg.out_dir) / cfg.run_name, fold)
    cfg_dict = json.loads(json.dumps(to_dict(cfg)))
    if index is None:
        index = prepare_index(cfg, info)
    train_loader, val_loader, sampler = make_loaders(cfg, index, fold, info, device)
    return _FoldRun(cfg=cfg, fold=fold, info=info, device=device, amp_dtype=amp_dtype, progress=progress, out=out,
                    cfg_dict=cfg_dict, preprocessing=read_preprocessing(cfg.data.preprocessed),
                    train_loader=train_loader, val_loader=val_loader, sampler=sampler)


def _build_model(run: _FoldRun) -> None:
    """Model (seeded), AdamW, warm-up/cosine schedule, fp16 grad scaler, loss and on-device augmentation."""
    cfg = run.cfg
    torch.manual_seed(cfg.seed)
    run.model = create_model(cfg.model.name, **cfg.model.kwargs).to(run.device)
    run.optimizer = torch.optim.AdamW(_param_groups(run.model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                      betas=tuple(cfg.optim.betas))
    total = run.steps * cfg.epochs
    warmup = int(round(cfg.optim.warmup_epochs * run.steps))
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(
        run.optimizer, lambda s: lr_lambda(s, total, warmup, cfg.optim.min_lr_ratio))
    run.scaler = torch.amp.GradScaler("cuda", enabled=run.amp_dtype == torch.float16)
    run.loss_fn = build_loss(cfg.loss)
    run.augment = BatchAugment(cfg.augment)


def _load_init_weights(run: _FoldRun, resume: bool) -> None:
    """``init_from``: start from another run's weights (skipped when resuming, where last.pt has newer ones)."""
    if run.cfg.init_from and not (resume and run.last_path.exists()):
        init = load_init_weights(run.model, run.cfg.init_from, run.fold)
        log.info("fold %d: starting from the weights of %s", run.fold, init)


def _resume(run: _FoldRun) -> bool:
    """Load model, optimizer, scheduler, scaler and progress from ``last.pt``; True when the fold had finished."""
    ckpt = load_checkpoint(run.last_path)
    bad = config_mismatch(ckpt["config"], run.cfg_dict)
    if bad:
        raise CheckpointError(f"{run.last_path} was trained with other settings ({', '.join(bad)}); "
                              "rerun with --no-resume (or another run_name) to start over")
    run.model.load_state_dict(ckpt["state_dict"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.state.update({k: ckpt[k] for k in run.state if k in ckpt})
    if run.state["done"]:
        return True
    log.info("fold %d: resuming from %s at epoch %d step %d", run.fold, run.last_path, run.state["epoch"],
             run.state["step_in_epoch"])
    return False


def _begin_epoch(run: _FoldRun) -> int:
    """Seed this epoch's random draws from (seed, epoch, rank), or restore them when resuming inside the epoch."""
    cfg, info, state = run.cfg, run.info, run.state
    epoch = state["epoch"]
    skip = state["step_in_epoch"]
    run.aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 104729 + info.rank)
    torch.manual_seed(cfg.seed + 1000 * epoch + info.rank)
    run.accum = {"loss": 0.0, "cls": 0.0, "heatmap": 0.0, "n": 0}
    if skip and state["rng"] and len(state["rng"]) == info.world_size:  # resuming inside this epoch
        run.aug_gen.set_state(state["rng"][info.rank]["aug"])
        torch.set_rng_state(state["rng"][info.rank]["torch"])
        if state["accum"]:
            run.accum = dict(state["accum"][info.rank])
    elif skip:
        log.warning("resuming mid-epoch with another world size: augmentation draws differ from before")
    run.sampler.set_epoch(epoch, skip)
    return epoch


def _train_epoch(run: _FoldRun, stop: StopRequest, on_step: StepHook | None) -> tuple[float, float]:
    """The epoch's training steps (from where a resume left off); (start time, training seconds).

    After each step a stop request (signal or ``on_step``) saves ``last.pt`` and raises KeyboardInterrupt; every
    ``save_every_steps`` steps ``last.pt`` is saved too.
    """
    cfg, state = run.cfg, run.state
    run.model.train()
    t0 = time.perf_counter()
    bar = tqdm(run.train_loader, desc=f"fold {run.fold} epoch {state['epoch'] + 1}/{cfg.epochs}", leave=False,
               disable=not run.progress, initial=state["step_in_epoch"], total=run.steps)
    for batch in bar:
        _train_step(run, batch)
        bar.set_postfix(loss=f"{run.accum['loss'] / run.accum['n']:.4f}")
        hook_stop = bool(on_step(dict(state, fold=run.fold))) if on_step else False
        if agree(stop.flag or hook_stop, run.info, run.device):
            _save_last(run)
            log.warning("fold %d: stopped at epoch %d step %d; last.pt saved, rerun to resume", run.fold,
                        state["epoch"], state["step_in_epoch"])
            raise KeyboardInterrupt
        if cfg.save_every_steps and state["step_in_epoch"] % cfg.save_every_steps == 0 \
                and state["step_in_epoch"] < run.steps:
            _save_last(run)
    bar.close()
    return t0, time.perf_counter() - t0


def _train_step(run: _FoldRun, batch: dict[str, torch.Tensor]) -> None:
    """Augment, forward under autocast, loss, backward (scaled), clip, optimizer and schedule step; count it."""
    cfg, state, accum = run.cfg, run.state, run.accum
    batch = run.augment(to_device(batch, run.device), run.aug_gen)
    with autocast(run.device, run.amp_dtype):
        outputs = run.model(batch["image"])
    loss, parts = run.loss_fn({k: v.float() for k, v in outputs.items()}, batch)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if cfg.optim.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.optim.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    state["global_step"] += 1
    state["step_in_epoch"] += 1
    accum["loss"] += float(loss.detach())
    accum["cls"] += parts["cls"]
    accum["heatmap"] += parts.get("heatmap", 0.0)
    accum["n"] += 1


def _validate(run: _FoldRun) -> dict[str, Any]:
    """Patch metrics (and mean loss) on the held-out fold, over all ranks."""
    _, probs, labels, vloss, vn = evaluate(unwrap(run.model), run.val_loader, run.loss_fn, run.device,
                                           run.amp_dtype, run.info, run.progress)
    metrics = patch_metrics(labels, probs, run.cfg.threshold)
    metrics["loss"] = vloss / max(vn, 1)
    return metrics


def _epoch_row(run: _FoldRun, epoch: int, metrics: dict[str, Any], train_seconds: float, t0: float
               ) -> dict[str, Any]:
    """The epoch's line of ``metrics.csv``: training losses summed over ranks, validation metrics, speed."""
    sums = all_gather_objects(run.accum, run.info)
    n_steps = sum(a["n"] for a in sums)
    return {"epoch": epoch + 1, "step": run.state["global_step"], "lr": run.optimizer.param_groups[0]["lr"],
            "train_loss": sum(a["loss"] for a in sums) / max(n_steps, 1),
            "train_cls": sum(a["cls"] for a in sums) / max(n_steps, 1),
            "train_heatmap": sum(a["heatmap"] for a in sums) / max(n_steps, 1),
            "val_loss": metrics["loss"], **{k: v for k, v in metrics.items() if k != "loss"},
            "train_patches_per_s": run.steps * run.cfg.batch_size * run.info.world_size / max(train_seconds, 1e-9),
            "seconds": time.perf_counter() - t0}


def _end_epoch(run: _FoldRun, row: dict[str, Any], value: float) -> tuple[bool, bool]:
    """Record the epoch and the monitored ``value``: (improved on the best, patience ran out)."""
    cfg, state = run.cfg, run.state
    state["history"].append(row)
    state["epoch"] += 1
    state["step_in_epoch"] = 0
    improved = better(value, state["best"], HIGHER_IS_BETTER[cfg.monitor])
    if improved:
        state["best"], state["best_epoch"], state["bad_epochs"] = value, row["epoch"], 0
    else:
        state["bad_epochs"] += 1
    stop_early = cfg.patience > 0 and state["bad_epochs"] >= cfg.patience
    state["done"] = stop_early or state["epoch"] >= cfg.epochs
    return improved, stop_early


def _log_epoch(run: _FoldRun, epoch: int, row: dict[str, Any], improved: bool) -> None:
    log.info("fold %d epoch %d/%d: train loss %.4f, val loss %.4f, score %.4f, AUC %.4f, acc %.3f, "
             "sens %.3f, spec %.3f, F2 %.3f%s", run.fold, epoch + 1, run.cfg.epochs, row["train_loss"],
             row["val_loss"], row["score"], row["auc"], row["acc"], row["sens"], row["spec"], row["f2"],
             " (best)" if improved else "")
    if row["skipped"]:
        log.debug("score left out single-class columns: %s", row["skipped"])


def _write_epoch_outputs(run: _FoldRun, epoch: int, row: dict[str, Any], improved: bool) -> None:
    """Main rank: ``best.pt`` when the epoch improved, then ``metrics.csv`` and ``curves.png``."""
    if not run.info.is_main:
        return
    if improved:
        save_checkpoint(model_payload(unwrap(run.model), run.cfg_dict, run.fold, epoch + 1, row, run.preprocessing),
                        run.out / BEST_CKPT)
    write_metrics_csv(run.state["history"], run.out / METRICS_CSV)
    plot_curves(run.state["history"], run.out / "curves.png", f"{run.cfg.run_name} fold {run.fold}")


def _save_last(run: _FoldRun) -> None:
    """``last.pt``: weights, optimizer, schedule, scaler, progress and every rank's random state and running losses
    (gathered on all ranks, written by the main one), so a rerun resumes exactly here."""
    rng = all_gather_objects({"aug": run.aug_gen.get_state(), "torch": torch.get_rng_state()}, run.info)
    accum_all = all_gather_objects(run.accum, run.info)
    if not run.info.is_main:
        return
    state = run.state
    payload = model_payload(unwrap(run.model), run.cfg_dict, run.fold, state["epoch"],
                            state["history"][-1] if state["history"] else {}, run.preprocessing)
    payload.update({k: v for k, v in state.items() if k not in ("rng", "accum")})
    payload.update(optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
                   scaler=run.scaler.state_dict(), rng=rng, accum=accum_all, world_size=run.info.world_size)
    save_checkpoint(payload, run.last_path)


def _summary(fold: int, state: dict[str, Any], out: Path) -> dict[str, Any]:
    best = next((r for r in state["history"] if r["epoch"] == state["best_epoch"]), {})
    return {"fold": fold, "best_epoch": state["best_epoch"], "epochs_run": len(state["history"]),
            "best": best, "dir": str(out)}


def train_folds(cfg: TrainConfig, folds: list[int] | None = None, resume: bool = True) -> list[dict[str, Any]]:
    """Train the given folds (all when None) of one run; writes ``<out_dir>/<run_name>/config.json`` and
    ``summary.json``. Under torchrun it joins the process group and leaves it at the end, also on error."""
    info = init_distributed(cfg.device)
    try:
        if not info.is_main:  # one copy of the log is enough
            logging.getLogger("rsna_aneurysm").setLevel(logging.WARNING)
        run_dir = Path(cfg.out_dir) / cfg.run_name
        if info.is_main:
            save_config(cfg, RunDir(run_dir).config)
        index = prepare_index(cfg, info)
        if folds is None:
            folds = sorted(f for f in set(index["fold"].to_list()) if f >= 0)
        results = [train_fold(cfg, k, info, resume=resume, index=index) for k in folds]
        if info.is_main:
            summary_path = RunDir(run_dir).summary
            old = json.loads(summary_path.read_text()) if summary_path.exists() else {}
            for r in results:
                old[str(r["fold"])] = r
            atomic_write_text(summary_path, json.dumps(old, indent=2, default=str))
        return results
    finally:
        cleanup(info)
