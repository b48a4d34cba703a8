"""Shared fixtures of the training tests: a toy preprocessed folder and tiny, fast training configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from toy import write_toy_preprocessed

from rsna_aneurysm.cli_common import resolve_config
from rsna_aneurysm.train.config import TrainConfig, load_train_config


@pytest.fixture(scope="session")
def toy_pre(tmp_path_factory) -> Path:
    """16 toy series (half positive) of 40^3 voxels."""
    return write_toy_preprocessed(tmp_path_factory.mktemp("toy_pre"), n_series=16, shape=(40, 40, 40), seed=1)


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory) -> Path:
    """One patch cache folder shared by the tests (entries are keyed by settings, so sharing is safe)."""
    return tmp_path_factory.mktemp("toy_cache")


def tiny_overrides(pre: Path, cache: Path, out: Path, **extra: str | None) -> dict[str, str | None]:
    """The shipped CPU demo config scaled down to the toy data: 16^3 patches at 1 mm, a narrower Tiny U-Net, a
    few seconds per run on one CPU thread."""
    base: dict[str, str | None] = {
        "data.preprocessed": str(pre), "data.cache_dir": str(cache), "data.workers": "0",
        "data.cache_workers": "1", "data.n_folds": "4", "out_dir": str(out), "run_name": "tiny",
        "epochs": "3", "steps_per_epoch": None, "threads": "1", "progress": "false", "patience": "0",
        "cache.patch_size": "[16,16,16]", "cache.spacing_mm": "1.0", "cache.jitter_mm": "3",
        "cache.positives_per_aneurysm": "6", "cache.sphere_radius_mm": "2.5", "cache.hard_negative_depth_mm": "4",
        "model.kwargs": '{"channels": [4, 8, 16]}', "loss.heatmap_weight": "0.5",
    }
    base.update(extra)
    return base


def cfg_factory(pre: Path, cache: Path, out: Path) -> Callable[..., TrainConfig]:
    """``make(key=value, ...)``: the tiny config writing to ``out``, with dotted-key overrides (dots as '__')."""

    def make(**extra: str) -> TrainConfig:
        extra = {k.replace("__", "."): None if v is None else str(v) for k, v in extra.items()}
        return load_train_config(resolve_config("unet3d_cpu_demo"), tiny_overrides(pre, cache, out, **extra))

    return make


@pytest.fixture
def make_cfg(toy_pre, toy_cache, tmp_path) -> Callable[..., TrainConfig]:
    """Tiny configs writing under this test's ``tmp_path / "weights"``."""
    return cfg_factory(toy_pre, toy_cache, tmp_path / "weights")


@pytest.fixture(scope="module")
def module_cfg(toy_pre, toy_cache, tmp_path_factory) -> Callable[..., TrainConfig]:
    """Tiny configs writing under one folder shared by a test module (distinct run names keep runs apart)."""
    return cfg_factory(toy_pre, toy_cache, tmp_path_factory.mktemp("weights"))
