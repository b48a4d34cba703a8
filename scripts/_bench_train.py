"""Measurements behind ``bench_train.py`` (beside this file, which imports it from its own folder): training
throughput from a dataset, and data-only epoch time.

The training step here is the loop's (augment, autocast forward, loss, backward, AdamW) without validation or
checkpoints, so the number isolates what the data path costs the model.
"""

from __future__ import annotations

import contextlib
import resource
import threading
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from rsna_aneurysm.models.registry import create_model
from rsna_aneurysm.train.augment import BatchAugment
from rsna_aneurysm.train.config import TrainConfig
from rsna_aneurysm.train.distributed import DistInfo
from rsna_aneurysm.train.losses import build_loss
from rsna_aneurysm.train.runtime import train_amp_dtype, train_device


class TreeMemory:
    """Peak resident memory (MiB) of this process plus its children (DataLoader workers), sampled in a thread.

    Falls back to this process's own ``ru_maxrss`` when psutil is missing.
    """

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak_mib = max(self.peak_mib, total / 2**20)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeMemory:
        try:
            import psutil  # noqa: F401
        except ImportError:
            return self
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mib = max(self.peak_mib, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_memory(tree: TreeMemory | None = None) -> dict[str, float]:
    """Peak resident memory (MiB; of the process tree when ``tree`` sampled it) and, on CUDA, peak GPU memory."""
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if tree is not None:
        out["peak_tree_rss_mib"] = tree.peak_mib
    if torch.cuda.is_available():
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _loader(ds: Dataset, cfg: TrainConfig, workers: int, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=gen, num_workers=workers,
                      drop_last=True, persistent_workers=workers > 0)


def train_throughput(cfg: TrainConfig, ds: Dataset, steps: int, warmup: int = 2, workers: int | None = None
                     ) -> dict[str, Any]:
    """Patches per second over ``steps`` training steps (after ``warmup`` untimed ones)."""
    device = train_device(cfg, DistInfo())
    amp = train_amp_dtype(cfg, device)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model.name, **cfg.model.kwargs).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    loss_fn, augment = build_loss(cfg.loss), BatchAugment(cfg.augment)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = _loader(ds, cfg, cfg.data.workers if workers is None else workers)
    done, t0 = 0, 0.0
    tree = TreeMemory().__enter__()
    while done < steps + warmup:
        for batch in loader:
            if done == warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            batch = augment({k: v.to(device, non_blocking=True) for k, v in batch.items()}, gen)
            ctx = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
            with ctx:
                out = model(batch["image"])
            loss, _ = loss_fn({k: v.float() for k, v in out.items()}, batch)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            done += 1
            if done >= steps + warmup:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tree.__exit__(None, None, None)
    return {"patches_per_s": steps * cfg.batch_size / seconds, "seconds": seconds, "steps": steps,
            "batch_size": cfg.batch_size, "device": str(device), **peak_memory(tree)}


def data_epoch_seconds(cfg: TrainConfig, ds: Dataset, workers: int | None = None) -> dict[str, float]:
    """Seconds to read one epoch of ``ds`` through the loader, with no model (the data path alone)."""
    loader = _loader(ds, cfg, cfg.data.workers if workers is None else workers)
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        n += batch["image"].shape[0]
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "patches": n, "patches_per_s": n / max(seconds, 1e-9)}
