"""Train the vessel segmenter on the preprocessed series that have vessel labels (``_cowseg``).

Only the series with a segmentation take part (on the real data about a tenth; on synthetic data the fraction the
generator writes). Every series is brought to the segmenter's isotropic spacing (image linear, labels nearest) and
held in memory; a fraction is held out for validation. Each step draws patches, most of them centred on a vessel
voxel, with a left-right flip that swaps the Left/Right vessel classes, and an intensity jitter; the loss is cross
entropy plus soft Dice over the 13 vessel classes. After every epoch the held-out series are segmented by sliding
windows, exactly as at inference, and scored by Dice: the mean over vessel classes present in the truth, and the
Dice of "any vessel". ``<out>/vessels/segmenter.pt`` keeps the best epoch, ``last.pt`` the latest with the
optimiser, so a rerun with the same settings resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from ..config import require, to_dict
from ..constants import ID_COL
from ..io.atomic import atomic_write_csv, atomic_write_text
from ..io.nifti import read_volume
from ..layout import SEGMENTER_FILE, PreDir, RunDir, read_manifest
from ..runtime import PRECISIONS, autocast, resolve_device, resolve_precision
from .model import IN_CHANNELS, UNetConfig, build_unet, position_channels
from .segmenter import KitSegmenter, checkpoint_payload
from .types import N_VESSEL_CLASSES, SEG_LR_PERMUTATION

log = logging.getLogger(__name__)





@dataclass
class SegmenterConfig:
    """Settings of ``rsna-aneurysm vessels train`` (the defaults fit this 2-core CPU on synthetic data)."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    spacing_mm: float = 1.5  # isotropic spacing the segmenter works at (coarse stage: 1-2 mm)
    patch: tuple[int, int, int] = (40, 40, 40)  # training and sliding-window patch, voxels (k, j, i)
    epochs: int = 40
    steps_per_epoch: int = 20
    batch_size: int = 4
    lr: float = 1e-2
    weight_decay: float = 1e-4
    dice_weight: float = 3.0  # loss = cross entropy + dice_weight * (1 - soft Dice)
    vessel_focus: float = 0.7  # share of patches centred on a vessel voxel
    flip: bool = True  # left-right flip augmentation with the Left/Right class swap
    invert: float = 0.25  # share of patches with inverted intensities (bright and dark vessels alike)
    val_fraction: float = 0.25  # share of the labelled series held out (at least one when there are two)
    val_every: int = 5  # validate every so many epochs (and after the last)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # runtime.resolve_precision: bf16 on CPUs and GPUs that have it
    threads: int | None = None

    def __post_init__(self) -> None:
        self.patch = tuple(int(p) for p in self.patch)
        require(len(self.patch) == 3 and all(p % self.unet.divisor == 0 and p > 0 for p in self.patch), "patch",
                f"needs three sizes, multiples of {self.unet.divisor} (the U-Net's halvings), got {list(self.patch)}")
        require(0.2 <= self.spacing_mm <= 8.0, "spacing_mm", f"must lie in 0.2..8 mm, got {self.spacing_mm}")
        require(self.epochs >= 1 and self.steps_per_epoch >= 1 and self.batch_size >= 1, "epochs",
                "epochs, steps_per_epoch and batch_size must be positive")
        require(0.0 <= self.vessel_focus <= 1.0, "vessel_focus", f"must lie in [0, 1], got {self.vessel_focus}")
        require(0.0 <= self.val_fraction < 1.0, "val_fraction", f"must lie in [0, 1), got {self.val_fraction}")
        require(self.precision in PRECISIONS, "precision", f"one of {list(PRECISIONS)}, got {self.precision!r}")


@dataclass
class LabelledSeries:
    uid: str
    image: np.ndarray  # float32 (k, j, i) at the segmenter spacing
    labels: np.ndarray  # uint8, same shape
    vessel_idx: np.ndarray  # (N, 3) voxel indices of vessel voxels


def load_labelled(pre_dir: str | Path, spacing_mm: float, uids: list[str] | None = None) -> list[LabelledSeries]:
    """Every ok series of the preprocessed folder with a segmentation (or those of ``uids``), at ``spacing_mm``."""
    from ..preprocess.geometry import resample

    pre = PreDir(pre_dir)
    man = read_manifest(pre)
    if "segmentation" not in man.columns:
        raise FileNotFoundError(f"{pre.manifest}: no 'segmentation' column (rerun `rsna-aneurysm preprocess`)")
    rows = man.filter(pl.col("segmentation").is_not_null() & (pl.col("segmentation") != ""))
    if uids is not None:
        rows = rows.filter(pl.col(ID_COL).is_in(uids))
    out = []
    for r in rows.iter_rows(named=True):
        img = read_volume(pre.root / r["volume"], mmap=False)
        lab = read_volume(pre.root / r["segmentation"], mmap=False)
        if img.array.shape != lab.array.shape:
            raise ValueError(f"series {r[ID_COL]}: segmentation {lab.array.shape} is not on the volume's grid "
                             f"{img.array.shape}")
        if not np.allclose(img.spacing, spacing_mm, atol=1e-3):
            img = resample(img, (spacing_mm,) * 3, "linear")
            lab = resample(lab, interpolator="nearest", reference=img, default_value=0, dtype=np.uint8)
        labels = np.asarray(lab.array).astype(np.uint8)
        labels[labels >= N_VESSEL_CLASSES] = 0
        out.append(LabelledSeries(r[ID_COL], np.asarray(img.array, dtype=np.float32), labels,
                                  np.argwhere(labels > 0)))
    return out


def split_series(series: list[LabelledSeries], fraction: float, seed: int
                 ) -> tuple[list[LabelledSeries], list[LabelledSeries]]:
    """(train, validation): a seeded share of the series held out, at least one when there are two or more."""
    n_val = 0 if fraction <= 0 or len(series) < 2 else max(1, int(round(fraction * len(series))))
    order = np.random.default_rng(seed).permutation(len(series))
    val = {int(i) for i in order[:n_val]}
    return [s for i, s in enumerate(series) if i not in val], [s for i, s in enumerate(series) if i in val]


def _crop(arr: np.ndarray, start: np.ndarray, size: tuple[int, int, int], fill: float) -> np.ndarray:
    """``arr[start:start+size]`` with ``fill`` where the window leaves the array."""
    out = np.full(size, fill, dtype=arr.dtype)
    src = [slice(max(s, 0), min(s + n, d)) for s, n, d in zip(start, size, arr.shape)]
    dst = [slice(a.start - s, a.stop - s) for a, s in zip(src, start)]
    out[tuple(dst)] = arr[tuple(src)]
    return out


def sample_batch(series: list[LabelledSeries], cfg: SegmenterConfig, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` training patches (input (B, 4, ...) float32: image and the three position channels of
    :func:`~.model.position_channels`; labels (B, ...) int64)."""
    size = np.asarray(cfg.patch)
    xs, ys = [], []
    for _ in range(cfg.batch_size):
        s = series[int(rng.integers(len(series)))]
        if len(s.vessel_idx) and rng.random() < cfg.vessel_focus:
            center = s.vessel_idx[int(rng.integers(len(s.vessel_idx)))] + rng.integers(-size // 4, size // 4 + 1)
        else:
            center = np.array([rng.integers(0, d) for d in s.image.shape])
        start = center - size // 2
        x = _crop(s.image, start, cfg.patch, 0.0)
        y = _crop(s.labels, start, cfg.patch, 0)
        pos = position_channels(s.image.shape, cfg.spacing_mm, start, cfg.patch)
        if cfg.flip and rng.random() < 0.5:
            x, y = x[..., ::-1], SEG_LR_PERMUTATION[y[..., ::-1]].astype(np.uint8)
            pos = pos[..., ::-1] * np.array([-1.0, 1.0, 1.0], np.float32)[:, None, None, None]
        if rng.random() < cfg.invert:
            x = 1.0 - x  # vessels bright on CTA/MRA, dark on T2: teach both
        x = x * float(rng.uniform(0.85, 1.15)) + float(rng.uniform(-0.1, 0.1))
        xs.append(np.concatenate([np.ascontiguousarray(x)[None], pos]))
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(xs)).float(), torch.from_numpy(np.stack(ys)).long()


def seg_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """Cross entropy + ``dice_weight`` * (1 - soft Dice), the Dice the mean of "any vessel" and of the vessel classes
    present in the batch (absent classes would only teach the network to predict nothing)."""
    logits = logits.float()
    ce = F.cross_entropy(logits, target)
    if dice_weight <= 0:
        return ce
    prob = torch.softmax(logits, 1)
    p = prob[:, 1:]
    t = F.one_hot(target, N_VESSEL_CLASSES).permute(0, 4, 1, 2, 3)[:, 1:].float()
    dims = (0, 2, 3, 4)
    inter, denom = (p * t).sum(dims), (p + t).sum(dims)
    present = t.sum(dims) > 0
    pf, tf = 1.0 - prob[:, 0], (target > 0).float()
    any_dice = (2 * (pf * tf).sum() + 1.0) / (pf.sum() + tf.sum() + 1.0)
    if not bool(present.any()):
        return ce + dice_weight * (1.0 - any_dice)
    dice = ((2 * inter + 1.0) / (denom + 1.0))[present].mean()
    return ce + dice_weight * (1.0 - 0.5 * (dice + any_dice))


def dice_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``class_dice``: mean Dice over the vessel classes present in ``truth``; ``vessel_dice``: Dice of any
    vessel (label > 0)."""
    per = []
    for v in range(1, N_VESSEL_CLASSES):
        t = truth == v
        if t.any():
            p = pred == v
            per.append(2.0 * np.logical_and(p, t).sum() / (p.sum() + t.sum()))
    p, t = pred > 0, truth > 0
    vessel = 2.0 * np.logical_and(p, t).sum() / max(p.sum() + t.sum(), 1)
    return {"class_dice": float(np.mean(per)) if per else float("nan"), "vessel_dice": float(vessel)}


def evaluate_segmenter(seg: KitSegmenter, series: list[LabelledSeries]) -> dict[str, Any]:
    """Dice of ``seg`` on held-out series (their arrays are already on the segmenter's grid)."""
    from ..volume import Volume

    rows = []
    for s in series:
        vol = Volume(array=s.image, spacing=(seg.spacing_mm,) * 3, origin=(0.0, 0.0, 0.0), direction=np.eye(3))
        pred = seg.segment(vol).labels()
        rows.append({ID_COL: s.uid} | dice_scores(pred, s.labels))
    out: dict[str, Any] = {"n_series": len(rows), "per_series": rows}
    for k in ("class_dice", "vessel_dice"):
        vals = [r[k] for r in rows if math.isfinite(r[k])]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


def _config_key(cfg: SegmenterConfig) -> str:
    d = to_dict(cfg)
    for k in ("device", "threads", "val_every", "epochs"):
        d.pop(k, None)
    return json.dumps(d, sort_keys=True)


def train_segmenter(pre_dir: str | Path, out_dir: str | Path, cfg: SegmenterConfig | None = None
                    ) -> dict[str, Any]:
    """Train (or resume) the vessel segmenter into ``<out_dir>/vessels/``; returns its metrics."""
    cfg = cfg or SegmenterConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    folder = RunDir(out_dir).segmenter.parent
    folder.mkdir(parents=True, exist_ok=True)
    series = load_labelled(pre_dir, cfg.spacing_mm)
    if not series:
        raise FileNotFoundError(f"{pre_dir}: no preprocessed series has a vessel segmentation; the segmenter needs "
                                "some (segmentations/<uid>/<uid>_cowseg.nii in the competition folder)")
    train, val = split_series(series, cfg.val_fraction, cfg.seed)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    net = build_unet(IN_CHANNELS, N_VESSEL_CLASSES, cfg.unet).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1)
    history: list[dict[str, Any]] = []
    start_epoch, best = 0, -1.0
    last_path = folder / "last.pt"
    if last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        if state.get("config_key") == _config_key(cfg) and state.get("epochs") == cfg.epochs:
            net.load_state_dict(state["state_dict"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start_epoch, best, history = int(state["epoch"]) + 1, float(state["best"]), list(state["history"])
            log.info("resuming the segmenter from %s (epoch %d)", last_path, start_epoch)
        else:
            log.warning("%s was trained with other settings; training the segmenter from scratch", last_path)
    if start_epoch >= cfg.epochs and (folder / SEGMENTER_FILE).is_file():
        return json.loads((folder / "metrics.json").read_text())
    rng = np.random.default_rng(cfg.seed + 1000 * start_epoch)
    preprocessing = {}
    cfg_path = PreDir(pre_dir).config
    if cfg_path.is_file():
        preprocessing = json.loads(cfg_path.read_text())
    metrics: dict[str, Any] = {}
    from ..train.checkpoint import save_checkpoint

    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        t0, losses = time.perf_counter(), []
        for _ in range(cfg.steps_per_epoch):
            x, y = sample_batch(train, cfg, rng)
            x, y = x.to(device), y.to(device)
            with autocast(device, precision):
                logits = net(x)
            loss = seg_loss(logits, y, cfg.dice_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        row: dict[str, Any] = {"epoch": epoch, "train_loss": float(np.mean(losses)),
                               "seconds": time.perf_counter() - t0}
        last = epoch == cfg.epochs - 1
        if val and ((epoch + 1) % cfg.val_every == 0 or last):
            net.eval()
            seg = KitSegmenter(net, cfg.spacing_mm, cfg.patch, cfg.unet, str(device), "fp32", copy_model=True)
            ev = evaluate_segmenter(seg, val)
            row |= {"val_class_dice": ev["class_dice"], "val_vessel_dice": ev["vessel_dice"]}
            score = ev["class_dice"] if math.isfinite(ev["class_dice"]) else -1.0
            if score > best:
                best = score
                metrics = {"epoch": epoch, "val": ev, "n_train": len(train), "n_val": len(val),
                           "train_series": [s.uid for s in train], "val_series": [s.uid for s in val]}
                save_checkpoint(checkpoint_payload(net, cfg.unet, cfg.spacing_mm, cfg.patch, to_dict(cfg), metrics,
                                                   epoch, preprocessing), folder / SEGMENTER_FILE)
        elif not val and last:
            metrics = {"epoch": epoch, "val": None, "n_train": len(train), "n_val": 0,
                       "train_series": [s.uid for s in train], "val_series": []}
            save_checkpoint(checkpoint_payload(net, cfg.unet, cfg.spacing_mm, cfg.patch, to_dict(cfg), metrics,
                                               epoch, preprocessing), folder / SEGMENTER_FILE)
        history.append(row)
        log.info("segmenter epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items() if k != "epoch"})
        save_checkpoint({"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                         "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
                         "best": best, "history": history, "config_key": _config_key(cfg), "epochs": cfg.epochs},
                        last_path)
        atomic_write_csv(pl.DataFrame(history), folder / "metrics.csv")
    metrics = metrics | {"history": history, "train_series": [s.uid for s in train],
                         "val_series": [s.uid for s in val]}
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2, default=float) + "\n")
    atomic_write_text(folder / "config.json", json.dumps(to_dict(cfg), indent=2) + "\n")
    return metrics

