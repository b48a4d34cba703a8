"""Validation of a fold's model over all ranks' shards, and whether an epoch's monitored value is the best yet."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..runtime import autocast
from .distributed import DistInfo, all_gather_objects

HIGHER_IS_BETTER = {"score": True, "auc": True, "f2": True, "loss": False}


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A loader batch moved to ``device`` (non-blocking from pinned memory)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, loss_fn: Callable, device: torch.device,
             amp_dtype: torch.dtype | None, info: DistInfo, progress: bool = False) -> tuple[np.ndarray, ...]:
    """(index, probabilities, labels, summed loss, count) over all ranks' shards, deduplicated."""
    model.eval()
    idx, probs, labels, loss_sum, n = [], [], [], 0.0, 0
    for batch in tqdm(loader, desc="val", leave=False, disable=not progress):
        batch = to_device(batch, device)
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


def better(new: float, best: float | None, higher: bool) -> bool:
    """Whether ``new`` beats ``best`` (a NaN never does, anything beats a missing or NaN best)."""
    if new is None or (isinstance(new, float) and math.isnan(new)):
        return best is None
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return new > best if higher else new < best
