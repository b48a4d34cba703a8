"""Where and in what arithmetic torch runs: one device and one precision rule for training and inference alike.

``resolve_device`` turns a config's ``device`` ("auto", "cpu", "cuda", "cuda:N") into a ``torch.device``;
``resolve_precision`` turns a config's ``precision`` ("auto", "fp32", "bf16", "fp16") into the precision that
device runs. ``auto`` means the same everywhere: on CUDA bfloat16 where the GPU computes it natively (Ampere and
later), else float16 (T4, V100: training adds a gradient scaler); on a CPU bfloat16 where it is native (AMX /
AVX512-BF16: 2-3x faster, probabilities within ~1e-3), else float32.

float16 is CUDA only (torch's CPU float16 kernels are slow and partly missing): ``fp16`` on a CPU runs float32,
with one warning per process, so a config written for a GPU box still runs on a CPU one. An explicit ``bf16``
is kept on any device (emulated where not native: slow, but what was asked for).
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Literal

import torch

log = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_warned: set[str] = set()


def is_device_name(name: str) -> bool:
    """True for the device names configs accept: ``auto``, ``cpu``, ``cuda``, ``cuda:N``."""
    return bool(_DEVICE_RE.match(str(name)))


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else the CPU; ``cuda`` -> ``cuda:<local_rank>``
    (each torchrun process its own GPU); ``cuda:N`` as given. Raises ValueError for another name, or for a CUDA
    device when torch sees no GPU (instead of a torch error at the first tensor moved)."""
    name = str(name)
    if not is_device_name(name):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU; use auto or cpu")
    return torch.device(name) if name.startswith("cuda:") else torch.device("cuda", local_rank)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (oneDNN reports AMX / AVX512-BF16 support)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cuda_has_native_bf16() -> bool:
    """True when the current GPU computes bfloat16 natively; emulated bfloat16 (pre-Ampere) does not count."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch without the keyword reports native support only
        return bool(torch.cuda.is_bf16_supported())


def resolve_precision(precision: str, device: torch.device | str) -> Precision:
    """The precision ``device`` runs for a config's ``precision`` (see the module docstring); ValueError for an
    unknown name."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    on_cuda = torch.device(device).type == "cuda"
    if precision == "auto":
        if on_cuda:
            return "bf16" if cuda_has_native_bf16() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and not on_cuda:
        if "fp16" not in _warned:
            _warned.add("fp16")
            log.warning("precision fp16 is CUDA only: running float32 on %s", device)
        return "fp32"
    return precision  # type: ignore[return-value]


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None for fp32: no autocast)."""
    if precision not in _DTYPES:
        raise ValueError(f"precision {precision!r} is not resolved; pass it through resolve_precision first")
    return _DTYPES[precision]


def autocast(device: torch.device | str, precision: str | torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``precision`` on ``device`` (a precision name, or an autocast dtype with None for full
    precision); a null context for fp32. The name is resolved first, so fp16 never autocasts on a CPU."""
    device = torch.device(device)
    if precision is None or isinstance(precision, torch.dtype):
        names = {v: k for k, v in _DTYPES.items()}
        if precision not in names:
            raise ValueError(f"no precision has the autocast dtype {precision}")
        precision = names[precision]
    dtype = autocast_dtype(resolve_precision(precision, device))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
