"""Device and precision: one rule (``rsna_aneurysm.runtime``) that training and inference both follow, so
``precision: auto`` means the same arithmetic in ``train`` as in ``predict`` on every kind of machine."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from rsna_aneurysm import runtime
from rsna_aneurysm.models.sliding_window import SlidingWindowConfig, SlidingWindowInferer, prepare_model
from rsna_aneurysm.runtime import autocast, autocast_dtype, resolve_device, resolve_precision
from rsna_aneurysm.train.config import TrainConfig
from rsna_aneurysm.train.distributed import DistInfo
from rsna_aneurysm.train.runtime import train_amp_dtype, train_device

SRC = Path(runtime.__file__).resolve().parent


def _machine(monkeypatch: pytest.MonkeyPatch, cuda: bool, cuda_bf16: bool, cpu_bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: cuda_bf16)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: cpu_bf16)


# (CUDA present, its bf16 native, CPU bf16 native) -> the device and precision "auto" must mean, everywhere.
MACHINES = [
    pytest.param(True, True, False, "cuda", "bf16", id="cuda-with-bf16"),
    pytest.param(True, False, True, "cuda", "fp16", id="cuda-without-bf16"),
    pytest.param(False, True, True, "cpu", "bf16", id="cpu-with-bf16"),
    pytest.param(False, True, False, "cpu", "fp32", id="cpu-without-bf16"),
]


@pytest.mark.parametrize(("cuda", "cuda_bf16", "cpu_bf16", "device_type", "expected"), MACHINES)
def test_auto_means_the_same_in_training_and_inference(monkeypatch, cuda, cuda_bf16, cpu_bf16, device_type,
                                                       expected) -> None:
    _machine(monkeypatch, cuda, cuda_bf16, cpu_bf16)
    train_dev = train_device(TrainConfig(device="auto", precision="auto"), DistInfo())
    infer_dev = SlidingWindowInferer(SlidingWindowConfig(device="auto", precision="auto")).device
    assert train_dev.type == infer_dev.type == device_type
    assert resolve_precision("auto", infer_dev) == expected
    assert train_amp_dtype(TrainConfig(precision="auto"), train_dev) == autocast_dtype(expected)
    if device_type == "cpu":  # what the inference model is actually prepared with
        prepared = prepare_model(nn.Conv3d(1, 2, 3), infer_dev, precision="auto")
        assert prepared._rsna_precision == expected
        assert prepared.weight.dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)


def test_cuda_autocast_needs_native_bf16_not_emulated(monkeypatch) -> None:
    """A T4 emulates bfloat16 (slowly): ``auto`` must pick float16 there, so native support is what is asked."""
    asked: list[bool] = []

    def supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return including_emulation  # emulated only
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert resolve_precision("auto", torch.device("cuda", 0)) == "fp16"
    assert asked == [False]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # a torch without the keyword
    assert resolve_precision("auto", "cuda:0") == "bf16"


def test_explicit_precisions_and_errors(monkeypatch, caplog) -> None:
    _machine(monkeypatch, cuda=False, cuda_bf16=False, cpu_bf16=False)
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_precision("bf16", cpu) == "bf16"  # asked for: kept even where emulated
    assert resolve_precision("fp16", gpu) == "fp16" and resolve_precision("fp32", gpu) == "fp32"
    with pytest.raises(ValueError, match="'int8'"):
        resolve_precision("int8", cpu)
    monkeypatch.setattr(runtime, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="rsna_aneurysm.runtime"):
        assert resolve_precision("fp16", cpu) == "fp32"
        assert resolve_precision("fp16", cpu) == "fp32"
    assert [r.message for r in caplog.records].count("precision fp16 is CUDA only: running float32 on cpu") == 1
    assert autocast_dtype("fp32") is None and autocast_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="not resolved"):
        autocast_dtype("auto")


def test_resolve_device(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=2) == torch.device("cuda", 2)
    assert resolve_device("cuda:3", local_rank=1) == torch.device("cuda", 3)
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")
    with pytest.raises(ValueError, match="'gpu'"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", local_rank=1) == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda:0")


def test_autocast_runs_the_resolved_precision() -> None:
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "fp16"):  # CUDA only: float32 on a CPU
        assert not torch.is_autocast_enabled("cpu")
    for precision in ("bf16", torch.bfloat16):
        with autocast(torch.device("cpu"), precision):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast("cpu", None):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="autocast dtype"):
        autocast("cpu", torch.float64)


class _Probe(nn.Module):
    """Records whether it ran under autocast, and with which dtype its input arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 1)
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append((torch.is_autocast_enabled(x.device.type), x.dtype))
        return {"heatmap": self.conv(x).float()}


@pytest.mark.parametrize(("precision", "prepared", "expected"), [
    ("bf16", False, (True, torch.float32)),  # float32 weights: autocast
    ("bf16", True, (False, torch.bfloat16)),  # CPU-prepared: bfloat16 weights and input, no autocast
    ("fp32", False, (False, torch.float32)),
    ("fp16", False, (False, torch.float32)),  # CUDA only
])
def test_inferer_runs_the_model_in_the_resolved_precision(precision, prepared, expected) -> None:
    probe = _Probe()
    model = prepare_model(probe, "cpu", precision=precision, copy_model=False) if prepared else probe
    SlidingWindowInferer(SlidingWindowConfig(roi_size=(4, 4, 4), device="cpu", precision=precision))(
        model, torch.rand(4, 4, 4).numpy())
    assert probe.seen == [expected]


def test_runtime_imports_only_torch_and_the_standard_library() -> None:
    names = set()
    for node in ast.walk(ast.parse((SRC / "runtime.py").read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "runtime.py imports nothing of the package"
            names.add(node.module.split(".")[0])
    assert names <= {"__future__", "contextlib", "logging", "re", "typing", "torch"}
    train_runtime = (SRC / "train" / "runtime.py").read_text()
    assert "infer" not in {n.module.split(".")[0] for n in ast.walk(ast.parse(train_runtime))
                           if isinstance(n, ast.ImportFrom) and n.module}
