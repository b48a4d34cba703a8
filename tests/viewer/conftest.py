"""Fixtures of the viewer tests: a toy preprocessed folder, a prediction folder with Gaussian heatmaps at the true
aneurysms, and (for the run button) a weights folder of an untrained tiny model."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import weights_helper
from toy import write_toy_preprocessed

from rsna_aneurysm.constants import ID_COL, LABEL_COLS
from rsna_aneurysm.io.nifti import read_volume, write_volume

SHAPE = (32, 32, 32)


@pytest.fixture(autouse=True)
def _restore_main_module():
    """Streamlit's AppTest leaves the app script installed as ``sys.modules["__main__"]``. A later test in the same
    worker that starts a spawn process pool (the cache, the preprocessing) would then re-run the app in every child:
    put the real ``__main__`` back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@dataclass
class ViewerData:
    pre: Path
    pred: Path
    uids: list[str]
    localizers: pl.DataFrame


def gaussian_heatmap(shape: tuple[int, int, int], points: list[tuple[float, float, float]], peak: float = 0.9,
                     sigma: float = 2.0) -> np.ndarray:
    """Blobs of height ``peak`` at voxel ``points`` (k, j, i)."""
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    heat = np.zeros(shape, np.float32)
    for k, j, i in points:
        heat = np.maximum(heat, peak * np.exp(-((zz - k) ** 2 + (yy - j) ** 2 + (xx - i) ** 2) / (2 * sigma ** 2)))
    return heat


def probs_for(n: int) -> dict[str, float]:
    """Distinct, recognisable probabilities of series ``n``."""
    return {c: round(0.1 + 0.01 * j + 0.2 * n, 4) for j, c in enumerate(LABEL_COLS)}


def write_prediction_folder(pre: Path, out: Path) -> list[str]:
    """predictions.parquet, heatmaps/<uid>.nii.gz (blobs at each series' localizers), thresholds and metrics."""
    manifest = pl.read_parquet(pre / "manifest.parquet")
    locs = pl.read_parquet(pre / "localizers.parquet")
    uids = manifest[ID_COL].to_list()
    rows = []
    for n, uid in enumerate(uids):
        vol = read_volume(pre / f"volumes/{uid}.nii.gz")
        pts = [(r["k"], r["j"], r["i"]) for r in locs.filter(pl.col(ID_COL) == uid).iter_rows(named=True)]
        heat = gaussian_heatmap(vol.array.shape, pts, sigma=1.2)  # narrow: nearby aneurysms stay separate spots
        write_volume(vol.with_array(heat), out / "heatmaps" / f"{uid}.nii.gz", dtype=np.float32)
        rows.append({ID_COL: uid, **probs_for(n)})
    pl.DataFrame(rows).write_parquet(out / "predictions.parquet")
    (out / "thresholds.json").write_text(json.dumps({c: 0.3 for c in LABEL_COLS}))
    report = {"score": 0.8125, "aneurysm_auc": 0.875, "location_mean_auc": 0.75,
              "columns": {c: {"auc": 0.7, "positives": 1} for c in LABEL_COLS}}
    (out / "metrics.json").write_text(json.dumps(report))
    return uids


@pytest.fixture(scope="session")
def viewer_data(tmp_path_factory) -> ViewerData:
    """3 toy series (2 positive) of 32^3 voxels and their prediction folder."""
    root = tmp_path_factory.mktemp("viewer")
    pre = write_toy_preprocessed(root / "pre", n_series=3, shape=SHAPE, positive_fraction=0.67, seed=3)
    uids = write_prediction_folder(pre, root / "pred")
    return ViewerData(pre, root / "pred", uids, pl.read_parquet(pre / "localizers.parquet"))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """One fold of a random-init ``unet3d_tiny`` on 16^3 windows at 2 mm, no flip TTA (a fast run button)."""
    run = weights_helper.make_weights(tmp_path_factory.mktemp("weights") / "run", patch=16, spacing_mm=2.0)
    (run / "predictor.json").write_text(json.dumps({"tta_flip": False, "threads": 1}))
    return run
