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
                 channels: tuple[int, int, int] = (4, 8, 8), seed: int = 0, prevalence: bool = True,
                 preprocessing: dict | None = None) -> Path:
    """``run_dir/config.json``, ``fold_<k>/best.pt`` (random-init ``unet3d_tiny``) and ``prevalence.json``.

    ``preprocessing``: the preprocessing settings the checkpoints record (a preprocessed folder's ``config.json``,
    as training records it), which the kernel's predictor applies to raw series."""
    run_dir = Path(run_dir)
    cfg = {"run_name": run_dir.name,
           "model": {"name": "unet3d_tiny", "kwargs": {"channels": list(channels)}},
           "cache": {"patch_size": [patch] * 3, "spacing_mm": spacing_mm}}
    for fold in folds:
        torch.manual_seed(seed + fold)
        model = create_model("unet3d_tiny", channels=list(channels))
        pre = preprocessing if preprocessing is not None else {"spacing": [1.0, 1.0, 1.0], "mask": "head"}
        payload = model_payload(model, cfg, fold, 0, {"score": 0.5}, pre)
        save_checkpoint(payload, run_dir / f"fold_{fold}" / "best.pt")
    (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    if prevalence:
        values = {c: round(0.05 + 0.01 * i, 3) for i, c in enumerate(LABEL_COLS)}
        values[LABEL_COLS[-1]] = 0.43
        (run_dir / "prevalence.json").write_text(json.dumps(values))
    return run_dir


def add_region(run_dir: Path, seed: int = 0, max_spread_mm: float = 1e9) -> Path:
    """Stage one of the two-stage pipeline in ``run_dir/region/``: an untrained finder (whose spread check is off
    by default, so every series takes the finder path), ``region.json`` and an atlas from the synthetic vessel tree.
    """
    import numpy as np
    import polars as pl

    from rsna_aneurysm.config import to_dict
    from rsna_aneurysm.region.finder import FinderConfig, RegionConfig, RegionFinder
    from rsna_aneurysm.region.targets import truth_points
    from rsna_aneurysm.region.train_finder import FINDER_FILE, REGION_ATLAS, REGION_DIR, REGION_FILE

    cfg = RegionConfig(max_spread_mm=max_spread_mm,
                       finder=FinderConfig(view_shape=(16, 16, 16), view_spacing_mm=14.0, channels=(2, 4, 8)))
    folder = Path(run_dir) / REGION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    finder = RegionFinder(cfg.finder.channels).eval()
    torch.save({"state_dict": finder.state_dict(), "finder": to_dict(cfg.finder), "kind": "region_finder"},
               folder / FINDER_FILE)
    (folder / REGION_FILE).write_text(json.dumps(to_dict(cfg)))
    pts = truth_points({"pose": {"rotation": np.eye(3).tolist(), "translation": [0, 0, 0], "scale": 1.0}}, 6.0)
    centre = np.mean([p.mean(axis=0) for p in pts.values()], axis=0)
    rows = [{"location": loc, "dx": float(d[0]), "dy": float(d[1]), "dz": float(d[2])}
            for loc, p in pts.items() for d in p - centre]
    pl.DataFrame(rows).write_parquet(folder / REGION_ATLAS)
    return Path(run_dir)


def make_vessel_roi_weights(run_dir: Path, folds: tuple[int, ...] = (0, 1), seed: int = 0) -> Path:
    """A tiny vessel-ROI weights folder (random-init segmenter and ROI classifiers at 4 mm, ``roi.json``)."""
    from rsna_aneurysm.config import from_dict
    from rsna_aneurysm.roi.train import RoiTrainConfig, untrained_roi_run
    from rsna_aneurysm.vessels.train import SegmenterConfig

    cfg = from_dict(RoiTrainConfig, {"roi": {"spacing_mm": 4.0, "shape": [16, 16, 24], "jitter_vox": 1},
                                     "region": {"box_mm": [96.0, 64.0, 64.0]}, "dilate_vox": 1})
    seg = from_dict(SegmenterConfig, {"unet": {"features": [4, 8, 16], "blocks": [1, 1, 1]}, "spacing_mm": 4.0,
                                      "patch": [16, 16, 16]})
    return untrained_roi_run(run_dir, cfg, seg, {"spacing": [2.0, 2.0, 2.0], "mask": "head"}, folds, seed)
