"""Deterministic, resumable, shardable order of training patches for one epoch.

The order of epoch ``e`` depends only on (seed, e), so a resumed run sees exactly the batches an uninterrupted run
would; ``skip_batches`` drops the ones already trained on. Each rank takes every ``world_size``-th index, and the
order is padded by wrapping around so every rank gets the same number of full batches (no batch of one, which
batch norm cannot train on, and no rank waiting for another).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Indices into a dataset of ``n`` items for this rank: ``steps`` batches of ``batch_size``."""

    def __init__(self, n: int, batch_size: int, seed: int, steps: int | None = None, rank: int = 0,
                 world_size: int = 1) -> None:
        if n < 1:
            raise ValueError("EpochSampler needs at least one item")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.steps = steps or max(1, math.ceil(n / (batch_size * world_size)))
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """This rank's full index order of ``epoch`` (before skipping)."""
        need = self.steps * self.batch_size * self.world_size
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perms = [torch.randperm(self.n, generator=gen) for _ in range(math.ceil(need / self.n))]
        order = torch.cat(perms)[:need]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order(self.epoch)[self.skip_batches * self.batch_size:]
        return iter(order.tolist())

    def __len__(self) -> int:
        return (self.steps - self.skip_batches) * self.batch_size
