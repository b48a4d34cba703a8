"""End to end on the kit's own stages: synthetic DICOM -> preprocessing -> patch cache -> training -> load_model."""

from __future__ import annotations

import pytest
import torch

from rsna_aneurysm.cli_common import resolve_config
from rsna_aneurysm.train.checkpoint import load_model
from rsna_aneurysm.train.config import load_train_config
from rsna_aneurysm.train.loop import train_folds


@pytest.mark.slow
def test_synthetic_competition_folder_to_fold_checkpoint(tmp_path):
    from rsna_aneurysm.data.synth.dataset import generate_dataset
    from rsna_aneurysm.preprocess.dataset import preprocess_dataset
    from rsna_aneurysm.preprocess.pipeline import PreprocessConfig

    generate_dataset(tmp_path / "data", 8, preset="tiny", seed=0, n_test=0)
    # 2 mm keeps the test quick; the demo preprocesses at 1 mm.
    manifest = preprocess_dataset(tmp_path / "data", tmp_path / "pre", PreprocessConfig(spacing=(2.0, 2.0, 2.0)),
                                  workers=1, progress=False)
    assert (manifest["status"] == "ok").sum() >= 6
    cfg = load_train_config(resolve_config("unet3d_cpu_demo"), {
        "data.preprocessed": str(tmp_path / "pre"), "out_dir": str(tmp_path / "weights"), "epochs": "2",
        "data.n_folds": "2", "data.workers": "0", "data.cache_workers": "1", "threads": "1", "progress": "false",
        "cache.patch_size": "[16,16,16]", "cache.spacing_mm": "2.0", "cache.jitter_mm": "4",
        "model.kwargs": '{"channels": [4, 8, 8]}'})
    (result,) = train_folds(cfg, [0])
    assert result["epochs_run"] == 2 and result["best_epoch"] in (1, 2)
    model, meta = load_model(tmp_path / "weights" / cfg.run_name, 0)
    assert meta["preprocessing"]["spacing"] == [2.0, 2.0, 2.0] and meta["patch"]["spacing_mm"] == 2.0
    with torch.no_grad():
        out = model(torch.rand(1, 1, 40, 40, 40))  # fully convolutional: a larger window than the patches
    assert out["heatmap"].shape == (1, 1, 40, 40, 40) and torch.isfinite(out["logits"]).all()
