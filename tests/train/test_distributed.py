"""Two-process DistributedDataParallel training on CPU (gloo) under torchrun, through the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import polars as pl

from rsna_aneurysm.constants import ID_COL
from rsna_aneurysm.data.cache import read_index
from rsna_aneurysm.data.folds import resolve_folds, series_labels
from rsna_aneurysm.train.checkpoint import load_checkpoint


def test_torchrun_two_cpu_processes(toy_pre, tmp_path):
    cfg = {
        "data": {"preprocessed": str(toy_pre), "cache_dir": str(tmp_path / "cache"), "workers": 0,
                 "cache_workers": 1, "n_folds": 4},
        "out_dir": str(tmp_path / "w"), "run_name": "ddp", "epochs": 2, "batch_size": 8, "threads": 1,
        "progress": False,
        "cache": {"patch_size": [16, 16, 16], "jitter_mm": 3, "positives_per_aneurysm": 4},
        "model": {"name": "unet3d_tiny", "kwargs": {"channels": [4, 8, 8]}},
        "loss": {"heatmap_weight": 0.5},
    }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "rsna_aneurysm.cli", "train", "--config", str(path), "--fold", "0", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = load_checkpoint(tmp_path / "w" / "ddp" / "fold_0" / "last.pt")
    assert last["done"] and last["world_size"] == 2 and len(last["history"]) == 2
    assert len(last["rng"]) == 2  # each rank's random state, for an exact mid-epoch resume
    # Each process takes half of every global batch: steps per epoch = ceil(train patches / (8 * 2)).
    index = read_index(tmp_path / "cache")
    folds = resolve_folds(series_labels(index), None, 4, 42)
    n_train = index.join(folds, on=ID_COL, suffix="_run").filter(pl.col("fold_run") != 0).height
    assert last["global_step"] == 2 * math.ceil(n_train / 16)
    assert (tmp_path / "w" / "ddp" / "fold_0" / "best.pt").exists()
    assert (tmp_path / "w" / "ddp" / "fold_0" / "metrics.csv").exists()
