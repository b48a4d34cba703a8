"""Test helper (not a test module): a weights folder of untrained tiny models in the training stage's format.

Loaded by path from the conftest files of tests/infer and tests/kaggle, so both share one definition.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rsna_aneurysm.constants import LABEL_COLS
from rsna_aneurysm.models import create_model
from rsna_aneurysm.train.checkpoint import model_payload, save_checkpoint


def make_weights(run_dir: Path, folds: tuple[int, ...] = (0,), patch: int = 32, spacing_mm: float = 4.0,
                 channels: tuple[int, int, int] = (4, 8, 8), seed: int = 0, prevalence: bool = True) -> Path:
    """``run_dir/config.json``, ``fold_<k>/best.pt`` (random-init ``unet3d_tiny``) and ``prevalence.json``."""
    run_dir = Path(run_dir)
    cfg = {"run_name": run_dir.name,
           "model": {"name": "unet3d_tiny", "kwargs": {"channels": list(channels)}},
           "cache": {"patch_size": [patch] * 3, "spacing_mm": spacing_mm}}
    for fold in folds:
        torch.manual_seed(seed + fold)
        model = create_model("unet3d_tiny", channels=list(channels))
        payload = model_payload(model, cfg, fold, 0, {"score": 0.5}, {"spacing": [1.0, 1.0, 1.0], "mask": "head"})
        save_checkpoint(payload, run_dir / f"fold_{fold}" / "best.pt")
    (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    if prevalence:
        values = {c: round(0.05 + 0.01 * i, 3) for i, c in enumerate(LABEL_COLS)}
        values[LABEL_COLS[-1]] = 0.43
        (run_dir / "prevalence.json").write_text(json.dumps(values))
    return run_dir
