"""Training: validation AUC rises above chance, interrupted runs resume to the same weights, checkpoints
rebuild their model from the run folder alone."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from rsna_aneurysm.constants import LABEL_COLS
from rsna_aneurysm.train.checkpoint import CheckpointError, load_checkpoint, load_model
from rsna_aneurysm.train.loop import train_fold, train_folds


def test_short_run_learns_and_writes_a_self_describing_run(make_cfg, tmp_path):
    cfg = make_cfg(epochs=4)
    results = train_folds(cfg, [0])
    best = results[0]["best"]
    assert best["auc"] > 0.85, best  # chance is 0.5
    assert best["score"] > 0.6
    run = tmp_path / "weights" / "tiny"
    assert json.loads((run / "config.json").read_text())["model"]["name"] == "unet3d_tiny"
    fold = run / "fold_0"
    metrics = pl.read_csv(fold / "metrics.csv")
    assert metrics["epoch"].to_list() == [1, 2, 3, 4]
    assert {"train_loss", "val_loss", "score", "auc", "acc", "sens", "spec", "f2", "skipped"} <= set(metrics.columns)
    assert metrics["auc"].max() == pytest.approx(best["auc"])
    assert (fold / "curves.png").stat().st_size > 1000
    model, meta = load_model(run, 0)
    assert meta["label_cols"] == list(LABEL_COLS) and meta["patch"]["size"] == [16, 16, 16]
    assert meta["metrics"]["auc"] == pytest.approx(best["auc"]) and meta["epoch"] == results[0]["best_epoch"]
    assert not model.training
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 16, 16, 16))
    assert out["logits"].shape == (1, 14) and out["heatmap"].shape == (1, 1, 16, 16, 16)
    last = load_checkpoint(fold / "last.pt")  # weights_only=True: plain types and tensors only
    assert last["done"] and len(last["history"]) == 4
    summary = json.loads((run / "summary.json").read_text())
    assert summary["0"]["best_epoch"] == results[0]["best_epoch"]
    # A finished fold is not trained again.
    again = train_fold(cfg, 0)
    assert again["epochs_run"] == 4 and again["best_epoch"] == results[0]["best_epoch"]


RESUME = {"epochs": 3, "steps_per_epoch": 4, "save_every_steps": 3}


@pytest.fixture(scope="module")
def uninterrupted(module_cfg):
    cfg = module_cfg(run_name="full", **RESUME)
    train_fold(cfg, 0, resume=False)
    return load_checkpoint(Path(cfg.out_dir) / "full" / "fold_0" / "last.pt")


@pytest.mark.parametrize("how", ["signal", "crash"])
def test_interrupted_run_resumes_to_the_same_result(module_cfg, uninterrupted, how):
    cfg = module_cfg(run_name=f"cut_{how}", **RESUME)
    last = Path(cfg.out_dir) / f"cut_{how}" / "fold_0" / "last.pt"

    def hook(state):
        # signal: a stop request at epoch 1 step 2 (saved there); crash: dies at epoch 1 step 4, losing the step
        # after the mid-epoch save at step 3.
        if how == "signal":
            return state["global_step"] == 6
        if state["global_step"] == 8:
            raise RuntimeError("simulated crash")
        return False

    with pytest.raises(KeyboardInterrupt if how == "signal" else RuntimeError):
        train_fold(cfg, 0, on_step=hook)
    saved = load_checkpoint(last)
    assert (saved["epoch"], saved["step_in_epoch"]) == ((1, 2) if how == "signal" else (1, 3))
    train_fold(cfg, 0)  # resumes from last.pt
    resumed = load_checkpoint(last)
    assert resumed["global_step"] == uninterrupted["global_step"] == 12
    for k, v in uninterrupted["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k
    strip = [{k: v for k, v in row.items() if k not in ("seconds", "train_patches_per_s")}
             for row in uninterrupted["history"]]
    assert strip == [{k: v for k, v in row.items() if k not in ("seconds", "train_patches_per_s")}
                     for row in resumed["history"]]


def test_resume_refuses_changed_settings(make_cfg):
    train_fold(make_cfg(run_name="r", epochs=1, steps_per_epoch=2), 0)
    with pytest.raises(CheckpointError, match="optim"):
        train_fold(make_cfg(run_name="r", epochs=1, steps_per_epoch=2, optim__lr=0.1), 0)
    # --no-resume starts over
    res = train_fold(make_cfg(run_name="r", epochs=1, steps_per_epoch=2, optim__lr=0.1), 0, resume=False)
    assert res["epochs_run"] == 1


def test_init_from_starts_from_a_trained_fold(make_cfg, tmp_path):
    first = train_fold(make_cfg(run_name="base", epochs=1, steps_per_epoch=2), 0)
    base = load_checkpoint(Path(first["dir"]) / "best.pt")["state_dict"]
    # Zero training steps' worth of change is impossible to ask for, so compare a tiny learning rate run: it
    # must stay next to the base weights, while a fresh run starts elsewhere.
    tuned = train_fold(make_cfg(run_name="tuned", epochs=1, steps_per_epoch=1, optim__lr=1e-9,
                                init_from=str(Path(first["dir"]).parent)), 0)
    got = load_checkpoint(Path(tuned["dir"]) / "last.pt")["state_dict"]
    key = next(k for k in base if k.endswith("weight") and base[k].ndim > 1)
    assert torch.allclose(got[key], base[key], atol=1e-5)
    fresh = train_fold(make_cfg(run_name="fresh", epochs=1, steps_per_epoch=1, optim__lr=1e-9, seed=5), 0)
    assert not torch.allclose(load_checkpoint(Path(fresh["dir"]) / "last.pt")["state_dict"][key], base[key])
    with pytest.raises(CheckpointError, match="init_from"):
        train_fold(make_cfg(run_name="bad", epochs=1, steps_per_epoch=1, init_from=str(tmp_path / "none.pt")), 0)
