"""Where and how a training process runs: its device and precision (by the package-wide rule of
``rsna_aneurysm.runtime``), progress bars, and graceful stop requests."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import torch

from ..runtime import autocast_dtype, resolve_device, resolve_precision
from .config import TrainConfig
from .distributed import DistInfo

log = logging.getLogger(__name__)


def train_device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    """The device of this training process: ``cfg.device`` through ``rsna_aneurysm.runtime.resolve_device``, with
    ``cuda`` / ``auto`` meaning this process's own GPU under torchrun."""
    return resolve_device(cfg.device, info.local_rank)


def train_amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of the training step (None: full precision), by the same rule as inference
    (``rsna_aneurysm.runtime.resolve_precision``); float16 gets a gradient scaler in the loop."""
    return autocast_dtype(resolve_precision(cfg.precision, device))


def progress_enabled(cfg: TrainConfig, info: DistInfo) -> bool:
    return cfg.progress and info.is_main and sys.stderr.isatty()


class StopRequest:
    """Set by SIGINT/SIGTERM (or a step hook); the loop saves ``last.pt`` at the next step boundary and stops."""

    def __init__(self) -> None:
        self.flag = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag:  # second signal: give up at once
            raise KeyboardInterrupt
        log.warning("signal %d: saving last.pt at the end of this step (again to abort now)", signum)
        self.flag = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def agree(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when any rank's flag is set (so all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t)
    return bool(t.item() > 0)
