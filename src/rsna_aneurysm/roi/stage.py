"""The vessel-ROI pipeline's inference parts, loaded from a weights folder, for ``infer.pipeline.ScanPipeline``.

A vessel-ROI weights folder (a run of ``rsna-aneurysm roi train``, or its packaged dataset) holds ``roi.json``
(the ROI and region settings), ``vessels/segmenter.pt``, one ROI classifier per fold (``fold_<k>/best.pt`` or
``fold_<k>.pt``) and, when the run had one, the region finder (``region/``), the vessel locator's first fallback.
Every checkpoint is loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import from_dict
from ..constants import LR_PERMUTATION
from ..layout import SEGMENTER_FLAT, RunDir
from ..region.finder import RegionBox
from ..region.geometry import Grid
from ..runtime import autocast, resolve_device, resolve_precision
from ..vessels.locator import VesselLocator, VesselRegionConfig
from ..vessels.segmenter import KitSegmenter
from ..volume import Volume
from .data import RoiConfig, build_roi
from .model import RoiClassifier, flip_input

log = logging.getLogger(__name__)



def segmenter_file(run_dir: str | Path) -> Path | None:
    """The vessel segmenter of a weights folder: ``vessels/segmenter.pt`` (run) or ``vessels_segmenter.pt``
    (packaged); None when it has neither."""
    for path in (RunDir(run_dir).segmenter, Path(run_dir) / SEGMENTER_FLAT):
        if path.is_file():
            return path
    return None


def has_vessel_roi(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is a vessel-ROI weights folder (``roi.json`` and the segmenter beside it)."""
    return RunDir(run_dir).roi_json.is_file() and segmenter_file(run_dir) is not None


@dataclass
class VesselRoiParts:
    models: list[RoiClassifier]
    meta: dict[str, Any]
    locator: VesselLocator
    segmenter: Any
    roi: RoiConfig
    device: torch.device
    precision: str
    preprocess_spacing_mm: float
    segmenter_source: str
    region_error: str | None = None


@dataclass
class RoiPrediction:
    probs: np.ndarray
    box: RegionBox
    grid: Grid
    sphere: np.ndarray | None
    peaks_world: np.ndarray
    peaks_prob: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


def fallback_locator(run_dir: Path, region_fold: int | None, device: str) -> tuple[Any, str | None]:
    """The region finder's stage of the run (its fold's when there is one; its ``locate`` never raises) as the
    vessel locator's fallback, or None (the head-geometry box)."""
    from ..region.stage_one import has_region, load_region

    if not has_region(run_dir):
        return None, None
    try:
        return load_region(run_dir, device=device, fold=region_fold), None
    except Exception as e:  # noqa: BLE001 - the head-geometry box remains
        log.error("%s: region finder could not be loaded (%s: %s); head-geometry fallback only", run_dir,
                  type(e).__name__, e)
        return None, f"{type(e).__name__}: {e}"


def load_vessel_roi(run_dir: str | Path, checkpoints: dict[int, Path], cfg: Any, region_fold: int | None = None
                    ) -> VesselRoiParts:
    """Classifiers of ``checkpoints``, the segmenter (the kit's, or ``cfg.nnunet_folder``) and the locator."""
    from ..train.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    spec = json.loads(RunDir(run_dir).roi_json.read_text())
    roi = from_dict(RoiConfig, spec.get("roi") or {})
    region = from_dict(VesselRegionConfig, spec.get("region") or {})
    device = resolve_device(cfg.window.device)
    precision = resolve_precision(cfg.window.precision, device)
    models, meta = [], {}
    for path in checkpoints.values():
        ckpt = load_checkpoint(path)
        if ckpt["model"]["name"] != "roi_classifier":
            raise ValueError(f"{path}: a {ckpt['model']['name']} checkpoint in a vessel-ROI weights folder")
        model = RoiClassifier(**ckpt["model"]["kwargs"])
        model.load_state_dict(ckpt["state_dict"])
        models.append(model.eval().to(device))
        if not meta:
            meta = {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer", "scheduler")}
        del ckpt
    if cfg.nnunet_folder:
        from ..vessels.nnunet_model import NnunetSegmenter

        folder = Path(cfg.nnunet_folder)
        folder = folder if folder.is_absolute() else run_dir / folder
        segmenter = NnunetSegmenter.from_folder(folder, folds=tuple(cfg.nnunet_folds), device=str(device))
        source = f"nnU-Net {folder.name}"
    else:
        segmenter = KitSegmenter.load(segmenter_file(run_dir), device=str(device), precision=cfg.window.precision)
        source = "kit"
    fallback, error = fallback_locator(run_dir, region_fold, str(device))
    locator = VesselLocator(region, segmenter, fallback)
    # The series whose vessel labels the segmenter learnt (out-of-fold reports say when they are scored).
    seen = ((getattr(segmenter, "meta", None) or {}).get("metrics") or {})
    if "train_series" in seen:
        locator.train_series = frozenset(seen["train_series"]) | frozenset(seen.get("val_series") or [])
    pre = meta.get("preprocessing") or {}
    spacing = pre.get("spacing")
    pre_mm = float(spacing[0]) if isinstance(spacing, (list, tuple)) and spacing else 1.0
    return VesselRoiParts(models, meta, locator, segmenter, roi, device, precision, pre_mm, source, error)


@torch.no_grad()
def predict_roi(parts: VesselRoiParts, vol: Volume, mask: np.ndarray | None, models: list[RoiClassifier],
                tta: bool, want_heatmap: bool, on_batch: Callable[[int], None] | None,
                clock: Callable[[], float]) -> RoiPrediction:
    """Segment, locate, cut the ROI and average the classifiers (and their mirrored passes)."""
    roi = build_roi(vol, mask, parts.segmenter, parts.locator, parts.roi, clock=clock)
    t0 = clock()
    x = torch.from_numpy(roi.x)[None].to(parts.device)
    xs = [x, flip_input(x)] if tta else [x]
    probs, spheres = [], []
    for model in models:
        for n, inp in enumerate(xs):
            with autocast(parts.device, parts.precision):
                out = model(inp)
            p = torch.sigmoid(out["logits"].float())[0]
            s = torch.sigmoid(out["heatmap"].float())[0, 0]
            if n == 1:
                p, s = p[list(LR_PERMUTATION)], s.flip(-1)
            probs.append(p.cpu().numpy())
            spheres.append(s)
            if on_batch is not None:
                on_batch(1)
    sphere = torch.stack(spheres).mean(0).cpu().numpy()
    idx = np.unravel_index(int(np.argmax(sphere)), sphere.shape)
    peaks_w = roi.grid.index_to_world(np.asarray(idx, dtype=np.float64)[None])
    t1 = clock()
    return RoiPrediction(probs=np.mean(probs, axis=0).astype(np.float64), box=roi.box, grid=roi.grid,
                         sphere=sphere if want_heatmap else None, peaks_world=peaks_w,
                         peaks_prob=np.asarray([float(sphere[idx])]),
                         timings=roi.timings | {"model_s": t1 - t0})
