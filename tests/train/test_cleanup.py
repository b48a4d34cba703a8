"""The process group is left at the end of a training run, also when the run fails."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from rsna_aneurysm.train import loop
from rsna_aneurysm.train.distributed import DistInfo, cleanup


def _record(monkeypatch) -> list[DistInfo]:
    calls: list[DistInfo] = []
    monkeypatch.setattr(loop, "cleanup", calls.append)
    return calls


def test_train_folds_cleans_up_after_a_run(make_cfg, monkeypatch):
    calls = _record(monkeypatch)
    (result,) = loop.train_folds(make_cfg(run_name="c", epochs=1, steps_per_epoch=1), [0])
    assert result["epochs_run"] == 1
    assert calls == [DistInfo()]


def test_train_folds_cleans_up_on_error(make_cfg, monkeypatch):
    calls = _record(monkeypatch)

    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(loop, "train_fold", boom)
    with pytest.raises(RuntimeError, match="simulated failure"):
        loop.train_folds(make_cfg(run_name="e", epochs=1, steps_per_epoch=1), [0])
    assert len(calls) == 1


def test_cleanup_leaves_the_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    cleanup(DistInfo())  # not distributed: leaves the group alone
    assert dist.is_initialized()
    cleanup(DistInfo(rank=0, world_size=2))
    assert not dist.is_initialized()
