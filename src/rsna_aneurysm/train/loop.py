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
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import save_config, to_dict
from ..models.registry import create_model
from .augment import BatchAugment
from .checkpoint import CheckpointError, fold_dir, load_checkpoint, model_payload, read_preprocessing, save_checkpoint
from .config import TrainConfig
from .data import make_loaders, prepare_index
from .distributed import DistInfo, all_gather_objects, barrier, init_distributed, unwrap
from .history import plot_curves, write_metrics_csv
from .losses import build_loss
from .metrics import patch_metrics
from .runtime import StopRequest, agree, autocast, progress_enabled, resolve_device, resolve_precision

log = logging.getLogger(__name__)

HIGHER_IS_BETTER = {"score": True, "auc": True, "f2": True, "loss": False}
StepHook = Callable[[dict[str, Any]], bool | None]


def lr_lambda(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, loss_fn: Callable, device: torch.device,
             amp_dtype: torch.dtype | None, info: DistInfo, progress: bool = False) -> tuple[np.ndarray, ...]:
    """(index, probabilities, labels, summed loss, count) over all ranks' shards, deduplicated."""
    model.eval()
    idx, probs, labels, loss_sum, n = [], [], [], 0.0, 0
    for batch in tqdm(loader, desc="val", leave=False, disable=not progress):
        batch = _to_device(batch, device)
        with autocast(device, amp_dtype):
            out = model(batch["image"])
        loss, _ = loss_fn({k: v.float() for k, v in out.items()}, batch)
        b = batch["image"].shape[0]
        loss_sum += float(loss) * b
        n += b
        idx.append(batch["index"].cpu().numpy())
        probs.append(torch.sigmoid(out["logits"].float()).cpu().numpy())
        labels.append(batch["labels"].cpu().numpy())
    part = (np.concatenate(idx) if idx else np.zeros(0, np.int64), np.concatenate(probs) if probs else None,
            np.concatenate(labels) if labels else None, loss_sum, n)
    parts = all_gather_objects(part, info)
    i = np.concatenate([p[0] for p in parts])
    order = np.unique(i, return_index=True)[1]
    p = np.concatenate([q[1] for q in parts if q[1] is not None])[order]
    y = np.concatenate([q[2] for q in parts if q[2] is not None])[order]
    return i[order], p, y, sum(q[3] for q in parts), sum(q[4] for q in parts)


def _better(new: float, best: float | None, higher: bool) -> bool:
    if new is None or (isinstance(new, float) and math.isnan(new)):
        return best is None
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return new > best if higher else new < best


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and normalisation weights (1-D parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _compatible(saved: dict[str, Any], cfg_dict: dict[str, Any]) -> list[str]:
    """Config keys whose change makes resuming meaningless."""
    keys = [("model",), ("cache",), ("seed",), ("batch_size",), ("steps_per_epoch",), ("optim",), ("loss",),
            ("data", "folds"), ("data", "n_folds"), ("data", "fold_seed")]
    bad = []
    for k in keys:
        a, b = saved, cfg_dict
        for part in k:
            a, b = a.get(part), b.get(part)
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            bad.append(".".join(k))
    return bad


def train_fold(cfg: TrainConfig, fold: int, info: DistInfo | None = None, resume: bool = True,
               on_step: StepHook | None = None, index: pl.DataFrame | None = None) -> dict[str, Any]:
    """Train one fold; returns a summary (best epoch and metrics). ``on_step`` may return True to stop (as SIGINT).

    With ``resume``, an existing ``last.pt`` of the same setup continues exactly where it stopped (a finished fold
    returns at once); otherwise the fold starts over.
    """
    info = info or init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg, info)
    amp_dtype = resolve_precision(cfg, device)
    progress = progress_enabled(cfg, info)
    out = fold_dir(Path(cfg.out_dir) / cfg.run_name, fold)
    cfg_dict = json.loads(json.dumps(to_dict(cfg)))
    if index is None:
        index = prepare_index(cfg, info)
    train_loader, val_loader, sampler = make_loaders(cfg, index, fold, info, device)
    preprocessing = read_preprocessing(cfg.data.preprocessed)

    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model.name, **cfg.model.kwargs).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=tuple(cfg.optim.betas))
    steps = sampler.steps
    total = steps * cfg.epochs
    warmup = int(round(cfg.optim.warmup_epochs * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, total, warmup, cfg.optim.min_lr_ratio))
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    loss_fn = build_loss(cfg.loss)
    augment = BatchAugment(cfg.augment)
    higher = HIGHER_IS_BETTER[cfg.monitor]

    state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": None, "best_epoch": -1,
                             "bad_epochs": 0, "history": [], "done": False, "accum": None, "rng": None}
    last_path = out / "last.pt"
    if cfg.init_from and not (resume and last_path.exists()):
        init = Path(cfg.init_from)
        init = init if init.is_file() else fold_dir(init, fold) / "best.pt"
        if not init.is_file():
            raise CheckpointError(f"init_from: no checkpoint at {init}")
        missing = model.load_state_dict(load_checkpoint(init)["state_dict"], strict=False)
        if missing.missing_keys or missing.unexpected_keys:
            raise CheckpointError(f"init_from {init}: another architecture (missing {missing.missing_keys[:3]}, "
                                  f"unexpected {missing.unexpected_keys[:3]})")
        log.info("fold %d: starting from the weights of %s", fold, init)
    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        bad = _compatible(ckpt["config"], cfg_dict)
        if bad:
            raise CheckpointError(f"{last_path} was trained with other settings ({', '.join(bad)}); "
                                  "rerun with --no-resume (or another run_name) to start over")
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state.update({k: ckpt[k] for k in state if k in ckpt})
        if state["done"]:
            log.info("fold %d: already finished (%s); nothing to do", fold, last_path)
            return _summary(fold, state, out)
        log.info("fold %d: resuming from %s at epoch %d step %d", fold, last_path, state["epoch"],
                 state["step_in_epoch"])
    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def save_last() -> None:
        rng = all_gather_objects({"aug": aug_gen.get_state(), "torch": torch.get_rng_state()}, info)
        accum_all = all_gather_objects(accum, info)
        if info.is_main:
            payload = model_payload(unwrap(model), cfg_dict, fold, state["epoch"],
                                    state["history"][-1] if state["history"] else {}, preprocessing)
            payload.update({k: v for k, v in state.items() if k not in ("rng", "accum")})
            payload.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                           scaler=scaler.state_dict(), rng=rng, accum=accum_all, world_size=info.world_size)
            save_checkpoint(payload, last_path)

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    with StopRequest() as stop:
        while state["epoch"] < cfg.epochs and not state["done"]:
            epoch = state["epoch"]
            skip = state["step_in_epoch"]
            aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch * 104729 + info.rank)
            torch.manual_seed(cfg.seed + 1000 * epoch + info.rank)
            accum = {"loss": 0.0, "cls": 0.0, "heatmap": 0.0, "n": 0}
            if skip and state["rng"] and len(state["rng"]) == info.world_size:  # resuming inside this epoch
                aug_gen.set_state(state["rng"][info.rank]["aug"])
                torch.set_rng_state(state["rng"][info.rank]["torch"])
                if state["accum"]:
                    accum = dict(state["accum"][info.rank])
            elif skip:
                log.warning("resuming mid-epoch with another world size: augmentation draws differ from before")
            sampler.set_epoch(epoch, skip)
            model.train()
            t0 = time.perf_counter()
            bar = tqdm(train_loader, desc=f"fold {fold} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=not progress, initial=skip, total=steps)
            for batch in bar:
                batch = augment(_to_device(batch, device), aug_gen)
                with autocast(device, amp_dtype):
                    outputs = model(batch["image"])
                loss, parts = loss_fn({k: v.float() for k, v in outputs.items()}, batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.optim.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                state["global_step"] += 1
                state["step_in_epoch"] += 1
                accum["loss"] += float(loss.detach())
                accum["cls"] += parts["cls"]
                accum["heatmap"] += parts.get("heatmap", 0.0)
                accum["n"] += 1
                bar.set_postfix(loss=f"{accum['loss'] / accum['n']:.4f}")
                hook_stop = bool(on_step(dict(state, fold=fold))) if on_step else False
                if agree(stop.flag or hook_stop, info, device):
                    save_last()
                    log.warning("fold %d: stopped at epoch %d step %d; last.pt saved, rerun to resume", fold,
                                epoch, state["step_in_epoch"])
                    raise KeyboardInterrupt
                if cfg.save_every_steps and state["step_in_epoch"] % cfg.save_every_steps == 0 \
                        and state["step_in_epoch"] < steps:
                    save_last()
            bar.close()
            train_seconds = time.perf_counter() - t0

            _, probs, labels, vloss, vn = evaluate(unwrap(model), val_loader, loss_fn, device, amp_dtype, info,
                                                   progress)
            metrics = patch_metrics(labels, probs, cfg.threshold)
            metrics["loss"] = vloss / max(vn, 1)
            sums = all_gather_objects(accum, info)
            n_steps = sum(a["n"] for a in sums)
            row = {"epoch": epoch + 1, "step": state["global_step"], "lr": optimizer.param_groups[0]["lr"],
                   "train_loss": sum(a["loss"] for a in sums) / max(n_steps, 1),
                   "train_cls": sum(a["cls"] for a in sums) / max(n_steps, 1),
                   "train_heatmap": sum(a["heatmap"] for a in sums) / max(n_steps, 1),
                   "val_loss": metrics["loss"], **{k: v for k, v in metrics.items() if k != "loss"},
                   "train_patches_per_s": steps * cfg.batch_size * info.world_size / max(train_seconds, 1e-9),
                   "seconds": time.perf_counter() - t0}
            state["history"].append(row)
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            value = metrics[cfg.monitor]
            improved = _better(value, state["best"], higher)
            if improved:
                state["best"], state["best_epoch"], state["bad_epochs"] = value, epoch + 1, 0
            else:
                state["bad_epochs"] += 1
            stop_early = cfg.patience > 0 and state["bad_epochs"] >= cfg.patience
            state["done"] = stop_early or state["epoch"] >= cfg.epochs
            log.info("fold %d epoch %d/%d: train loss %.4f, val loss %.4f, score %.4f, AUC %.4f, acc %.3f, "
                     "sens %.3f, spec %.3f, F2 %.3f%s", fold, epoch + 1, cfg.epochs, row["train_loss"],
                     row["val_loss"], row["score"], row["auc"], row["acc"], row["sens"], row["spec"], row["f2"],
                     " (best)" if improved else "")
            if row["skipped"]:
                log.debug("score left out single-class columns: %s", row["skipped"])
            if info.is_main:
                if improved:
                    save_checkpoint(model_payload(unwrap(model), cfg_dict, fold, epoch + 1, row, preprocessing),
                                    out / "best.pt")
                write_metrics_csv(state["history"], out / "metrics.csv")
                plot_curves(state["history"], out / "curves.png", f"{cfg.run_name} fold {fold}")
            save_last()
            if stop_early:
                log.info("fold %d: no improvement of %s for %d epochs: stopping early", fold, cfg.monitor,
                         cfg.patience)
    barrier(info)
    return _summary(fold, state, out)


def _summary(fold: int, state: dict[str, Any], out: Path) -> dict[str, Any]:
    best = next((r for r in state["history"] if r["epoch"] == state["best_epoch"]), {})
    return {"fold": fold, "best_epoch": state["best_epoch"], "epochs_run": len(state["history"]),
            "best": best, "dir": str(out)}


def train_folds(cfg: TrainConfig, folds: list[int] | None = None, resume: bool = True) -> list[dict[str, Any]]:
    """Train the given folds (all when None) of one run; writes ``<out_dir>/<run_name>/config.json`` and
    ``summary.json``."""
    info = init_distributed(cfg.device)
    if not info.is_main:  # one copy of the log is enough
        logging.getLogger("rsna_aneurysm").setLevel(logging.WARNING)
    run_dir = Path(cfg.out_dir) / cfg.run_name
    if info.is_main:
        save_config(cfg, run_dir / "config.json")
    index = prepare_index(cfg, info)
    if folds is None:
        folds = sorted(f for f in set(index["fold"].to_list()) if f >= 0)
    results = [train_fold(cfg, k, info, resume=resume, index=index) for k in folds]
    if info.is_main:
        summary_path = run_dir / "summary.json"
        old = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        for r in results:
            old[str(r["fold"])] = r
        tmp = summary_path.with_name(".summary.json.tmp")
        tmp.write_text(json.dumps(old, indent=2, default=str))
        tmp.replace(summary_path)
    return results
