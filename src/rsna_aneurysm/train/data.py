"""Training data for a run: the patch index with this run's folds, and the fold's train/validation loaders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl
import torch
from torch.utils.data import DataLoader

from ..config import ConfigError, to_dict
from ..constants import ANEURYSM_PRESENT, ID_COL
from ..data.cache import build_cache, read_index
from ..data.datasets import PatchDataset
from ..data.folds import resolve_folds, series_labels
from .config import TrainConfig
from .distributed import DistInfo, barrier
from .runtime import progress_enabled
from .sampler import EpochSampler

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The data cannot support the requested training (empty fold, missing cache, ...)."""


def prepare_index(cfg: TrainConfig, info: DistInfo) -> pl.DataFrame:
    """The patch index with this run's folds; rank 0 builds or completes the cache while the others wait."""
    cache_dir = cfg.cache_path()
    if info.is_main:
        if cfg.data.preprocessed:
            result = build_cache(cfg.data.preprocessed, cache_dir, cfg.cache, workers=cfg.data.cache_workers,
                                 folds=cfg.data.folds, n_folds=cfg.data.n_folds, fold_seed=cfg.data.fold_seed,
                                 progress=progress_enabled(cfg, info))
            if result.failed:
                log.warning("%d series failed in the cache and are left out: %s", len(result.failed),
                            ", ".join(sorted(result.failed)[:10]))
        else:
            _check_cache_settings(cfg, cache_dir)
    barrier(info)
    index = read_index(cache_dir)
    # Folds come from this run's config: a folds table, or the patient-grouped split of the cached series stratified
    # on all 14 labels. Out-of-fold prediction recomputes it from the same table (series_labels of this index).
    series = series_labels(index)
    folds = resolve_folds(series, cfg.data.folds, cfg.data.n_folds, cfg.data.fold_seed)
    return index.drop("fold").join(folds, on=ID_COL, how="left").with_columns(pl.col("fold").fill_null(-1))


def _check_cache_settings(cfg: TrainConfig, cache_dir: Path) -> None:
    path = cache_dir / "cache_config.json"
    if not path.exists():
        raise TrainingError(f"{cache_dir}: no cache_config.json; set data.preprocessed so the cache can be built")
    built = json.loads(path.read_text())
    want = json.loads(json.dumps(to_dict(cfg.cache)))
    diff = sorted(k for k in want if built.get(k) != want[k])
    if diff:
        raise ConfigError(f"cache {cache_dir} was built with other settings ({', '.join('cache.' + k for k in diff)}"
                          f"); set data.preprocessed to rebuild it, or match the config")


def make_loaders(cfg: TrainConfig, index: pl.DataFrame, fold: int, info: DistInfo,
                  device: torch.device) -> tuple[DataLoader, DataLoader, EpochSampler]:
    train_idx = index.filter((pl.col("fold") != fold) & (pl.col("fold") >= 0))
    val_idx = index.filter(pl.col("fold") == fold)
    if len(train_idx) == 0 or len(val_idx) == 0:
        folds = sorted(set(index["fold"].to_list()))
        raise TrainingError(f"fold {fold}: {len(train_idx)} training and {len(val_idx)} validation patches "
                            f"(folds present: {folds})")
    cache_dir = cfg.cache_path()
    with_mask = cfg.loss.heatmap_weight > 0
    train_ds = PatchDataset(cache_dir, train_idx, with_mask=with_mask)
    val_ds = PatchDataset(cache_dir, val_idx, with_mask=with_mask)
    sampler = EpochSampler(len(train_ds), cfg.batch_size, cfg.seed, cfg.steps_per_epoch, info.rank,
                           info.world_size)
    workers = cfg.data.workers
    common = {"num_workers": workers, "pin_memory": device.type == "cuda", "persistent_workers": workers > 0}
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=False, **common)
    val_loader = DataLoader(torch.utils.data.Subset(val_ds, list(range(info.rank, len(val_ds), info.world_size))),
                            batch_size=cfg.val_batch_size, shuffle=False, **common)
    log.info("fold %d: %d training patches (%d positive), %d validation patches (%d positive)", fold,
             len(train_idx), int(train_idx[ANEURYSM_PRESENT].sum()), len(val_idx),
             int(val_idx[ANEURYSM_PRESENT].sum()))
    return train_loader, val_loader, sampler
