"""The scan pipeline: one object, built once from a weights folder and settings, that turns a preprocessed volume
and its head mask into the scan result (14 probabilities, the heatmap, the region box, timings and flags).

Every caller goes through :meth:`ScanPipeline.predict`: the submission predictor (after reading and preprocessing
the DICOM series), out-of-fold prediction, hard-negative mining, the pipelines report and the viewer's live
prediction. So the out-of-fold score is the score of the code the kernel runs; ``tests/infer/test_parity.py`` holds
them equal.

Per volume: resample to the model's spacing when needed (linear; the mask nearest), crop to the head mask's box,
then either the **whole-scan** path (sliding windows over the head) or the **two-stage** path: the stage-one
locator's region box (a :class:`Locator`; today the region finder with its head-geometry fallback) cut from the
volume, sliding windows over the crop, and the scan rules of :mod:`.two_stage`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import polars as pl

from ..config import from_dict, require
from ..constants import LABEL_COLS, LOCATION_COLS
from ..io.tables import read_labels
from ..layout import REGION_FILES, RunDir, region_files
from ..models.sliding_window import SlidingWindowConfig, SlidingWindowInferer, prepare_model
from ..region.finder import RegionBox, RegionConfig, RegionLocator
from ..region.geometry import Grid
from ..region.stage_one import (
    LocationAtlas,
    RegionStage,
    crop_region,
    fold_region_dir,
    has_region,
    load_region,
)
from ..roi.stage import has_vessel_roi
from ..volume import Volume
from .aggregate import AggregateConfig
from .budget import BudgetConfig
from .scan import crop_to_mask, predict_volume
from .two_stage import TwoStageConfig, apply_rules

log = logging.getLogger(__name__)

# Used when a checkpoint does not record its training patches (older runs, hand-made weights).
DEFAULT_ROI = (64, 64, 64)
DEFAULT_SPACING_MM = 1.0


class WeightsError(FileNotFoundError):
    """A weights folder holds no usable checkpoint, or the folds asked for are missing."""


@dataclass
class PredictorConfig:
    """Settings of the scan pipeline and of the submission predictor around it (``predictor.json`` in the weights
    folder, then overrides). The budget, share-folder, heatmap-folder and prevalence keys are the predictor's."""

    folds: list[int] | None = None  # folds to ensemble; null: every fold with a checkpoint
    checkpoint: str = "best"  # which checkpoint of each fold (best | last)
    tta_flip: bool = True  # also run the left-right mirrored scan and swap the Left/Right outputs back
    spacing_mm: float | None = None  # isotropic inference spacing; null: the spacing of the training patches
    crop_margin_mm: float = 8.0  # crop to the head mask's box plus this margin (negative: no crop)
    window: SlidingWindowConfig = field(default_factory=lambda: SlidingWindowConfig(roi_size=None))
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    use_budget: bool = True  # let the time-budget planner step down in cost (off: always the full level)
    share_root: str | None = "/kaggle/shared"  # deleted after every call, as the competition requires; null: never
    heatmap_dir: str | None = None  # write each series' heatmap here as <uid>.nii.gz (for the viewer)
    threads: int | None = None  # torch CPU threads (null: torch's default)
    prevalence: list[float] | None = None  # fallback row (14 values); null: prevalence.json, else 0.5
    # Whole-scan sliding windows, the two-stage pipeline (region finder, then the fine model on the region crop;
    # needs stage one's files: region/ in a run folder, flat region.json etc. in the packaged weights dataset), or
    # the vessel-guided ROI classifier (vessel segmenter, region from the vessels, ROI classifier; a run of
    # `rsna-aneurysm roi train`: roi.json and vessels/segmenter.pt). auto: what the weights are.
    pipeline: Literal["auto", "whole", "two_stage", "vessel_roi"] = "auto"
    two_stage: TwoStageConfig = field(default_factory=TwoStageConfig)
    # vessel_roi only: a trained nnU-Net v2 model folder to segment with instead of vessels/segmenter.pt (relative
    # paths are read from the weights folder), and its folds.
    nnunet_folder: str | None = None
    nnunet_folds: list[int] = field(default_factory=lambda: [0])

    def __post_init__(self) -> None:
        require(self.prevalence is None or len(self.prevalence) == len(LABEL_COLS), "prevalence",
                f"needs {len(LABEL_COLS)} values (the fallback row), got {len(self.prevalence or [])}")


class Locator(Protocol):
    """Stage one: where stage two looks. ``locate`` never raises (a failure answers with a fallback box and says
    why in ``RegionBox.reason``)."""

    atlas: LocationAtlas | None

    def locate(self, vol: Volume, mask: np.ndarray | None) -> RegionBox: ...


@dataclass
class ScanResult:
    """What the pipeline answers for one volume.

    ``heatmap``: the blended aneurysm heatmap as a volume with its own geometry (the grid the fine model ran on: the
    region crop, or the head crop; world coordinates are exact, so any viewer or writer puts it on another grid).
    ``region``: stage one's box (None for the whole-scan path). ``timings``: seconds per step. ``flags``: what the
    pipeline had to do about this volume (resampled, region fallback and its reason, non-finite outputs replaced).
    """

    probs: np.ndarray
    heatmap: Volume | None
    region: RegionBox | None
    grid: Grid
    peaks_world: np.ndarray
    peaks_prob: np.ndarray
    n_windows: int
    n_passes: int
    timings: dict[str, float]
    flags: dict[str, Any]

    def row(self) -> dict[str, float]:
        return {c: float(v) for c, v in zip(LABEL_COLS, self.probs)}


def find_checkpoints(run_dir: str | Path, which: str = "best") -> dict[int, Path]:
    """Fold -> checkpoint path, from ``fold_<k>/<which>.pt`` (a training run) or ``fold_<k>.pt`` (packaged)."""
    return RunDir(run_dir).checkpoints(which)


def read_prevalence(path: str | Path) -> list[float]:
    """``prevalence.json`` ``{label: fraction}`` -> 14 values in label order (each in [0, 1])."""
    path = Path(path)
    data = json.loads(path.read_text())
    missing = [c for c in LABEL_COLS if c not in data]
    if missing:
        raise ValueError(f"{path}: no prevalence for {missing}")
    values = [float(data[c]) for c in LABEL_COLS]
    if not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"{path}: prevalences must lie in [0, 1]")
    return values


def write_prevalence(train_csv: str | Path, out: str | Path) -> Path:
    """Mean of each label column of a train.csv -> ``prevalence.json`` (the fallback row and the atlas prior)."""
    from ..io.atomic import atomic_write_text

    df = read_labels(train_csv, columns=list(LABEL_COLS))
    if df.height == 0:
        raise ValueError(f"{train_csv}: no rows to compute the label prevalence from")
    data = {c: float(df[c].cast(pl.Float64).mean()) for c in LABEL_COLS}
    return atomic_write_text(out, json.dumps(data, indent=2) + "\n")


def fallback_values(run_dir: str | Path, cfg: PredictorConfig) -> list[float]:
    """The fallback row: the ``prevalence`` setting, else the weights' ``prevalence.json``, else 0.5 everywhere."""
    if cfg.prevalence is not None:
        return [float(v) for v in cfg.prevalence]
    path = RunDir(run_dir).prevalence
    if path.is_file():
        return read_prevalence(path)
    log.warning("%s: no %s; fallback rows will be 0.5 for every label", run_dir, path.name)
    return [0.5] * len(LABEL_COLS)


def preprocess_config(meta: dict[str, Any], spacing_mm: float) -> Any:
    """The training run's PreprocessConfig (unknown keys dropped) at ``spacing_mm`` isotropic, without writing."""
    from ..preprocess.geometry import DEFAULT_MAX_VOXELS
    from ..preprocess.pipeline import PreprocessConfig

    known = {f.name for f in dataclasses.fields(PreprocessConfig)}
    saved = {k: v for k, v in (meta.get("preprocessing") or {}).items() if k in known}
    cfg = from_dict(PreprocessConfig, saved)
    # A run preprocessed without a grid limit (max_voxels null) still gets one at prediction: never unbounded.
    limit = DEFAULT_MAX_VOXELS if cfg.max_voxels is None else cfg.max_voxels
    return dataclasses.replace(cfg, spacing=(spacing_mm,) * 3, write_nifti=False, max_voxels=limit)


def fallback_region_stage(run_dir: str | Path, sigma_mm: float, prior: np.ndarray | None,
                          fold: int | None = None) -> RegionStage:
    """Stage one without its finder (every box the head-geometry fallback), for when ``load_region`` failed: the
    region settings when ``region.json`` still reads (else the defaults) and the atlas when it still reads (else
    none)."""
    files = region_files(run_dir) or {}
    if fold is not None and (fold_region_dir(run_dir, fold) / REGION_FILES["config"]).is_file():
        files = {k: fold_region_dir(run_dir, fold) / v for k, v in REGION_FILES.items() if k != "metrics"}
    cfg, atlas = RegionConfig(), None
    config, atlas_path = files.get("config"), files.get("atlas")
    try:
        if config is not None and config.is_file():
            cfg = from_dict(RegionConfig, json.loads(config.read_text()))
    except Exception as e:  # noqa: BLE001 - defaults are a usable fallback
        log.warning("%s unreadable (%s: %s); default region settings", config, type(e).__name__, e)
    try:
        if atlas_path is not None and atlas_path.is_file():
            atlas = LocationAtlas.read(atlas_path, sigma_mm, prior)
    except Exception as e:  # noqa: BLE001 - without the atlas, locations come from the fine model's head
        log.warning("%s unreadable (%s: %s); no location atlas", atlas_path, type(e).__name__, e)
    source = config.parent if config is not None else Path(run_dir)
    return RegionStage(RegionLocator(cfg, None), atlas, cfg, source)


class ScanPipeline:
    """Fold models, sliding-window inferer and optional stage-one locator of one weights folder; see the module
    docstring. Construction only checks the folder; :meth:`load` (called by the first :meth:`predict`) builds the
    models."""

    def __init__(self, run_dir: str | Path, cfg: PredictorConfig | None = None, folds: list[int] | None = None,
                 region_fold: int | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.run_dir = Path(run_dir)
        self.clock = clock  # the timings' clock (the predictor's, so its budget planner sees the same seconds)
        self.cfg = cfg or PredictorConfig()
        found = find_checkpoints(self.run_dir, self.cfg.checkpoint)
        if not found:
            raise WeightsError(f"{self.run_dir}: no fold_<k>/{self.cfg.checkpoint}.pt nor fold_<k>.pt checkpoint")
        wanted = folds if folds is not None else (self.cfg.folds if self.cfg.folds is not None else list(found))
        missing = [f for f in wanted if f not in found]
        if missing or not wanted:
            raise WeightsError(f"{self.run_dir}: no {self.cfg.checkpoint} checkpoint for fold(s) {missing or wanted};"
                               f" found {list(found)}")
        roi_run = has_vessel_roi(self.run_dir)
        if self.cfg.pipeline == "vessel_roi" and not roi_run:
            raise WeightsError(f"{self.run_dir}: pipeline vessel_roi needs roi.json and vessels/segmenter.pt "
                               "(rsna-aneurysm roi train)")
        if roi_run and self.cfg.pipeline in ("whole", "two_stage"):
            raise WeightsError(f"{self.run_dir}: a vessel-ROI run holds ROI classifiers, not a fine model for the "
                               f"{self.cfg.pipeline} pipeline")
        if self.cfg.pipeline == "two_stage" and not has_region(self.run_dir):
            raise WeightsError(f"{self.run_dir}: pipeline two_stage needs region/region.json (rsna-aneurysm region "
                               "train)")
        self.checkpoints = {f: found[f] for f in wanted}
        self.vessel_roi = roi_run
        self.two_stage = not roi_run and self.cfg.pipeline != "whole" and has_region(self.run_dir)
        self.region_fold = region_fold
        self.fallback_values = fallback_values(self.run_dir, self.cfg)
        self.models: list[Any] | None = None
        self.locator: Locator | None = None
        self.inferer: SlidingWindowInferer | None = None
        self.meta: dict[str, Any] = {}
        self.spacing_mm = float(self.cfg.spacing_mm or DEFAULT_SPACING_MM)
        self.region_error: str | None = None  # why stage one could not be loaded (then: fallback boxes only)
        self.vessel_parts: Any = None  # the vessel-ROI pipeline's loaded parts (roi.stage.VesselRoiParts)

    @property
    def name(self) -> str:
        return "vessel-roi" if self.vessel_roi else "two-stage" if self.two_stage else "whole-scan"

    @property
    def n_folds(self) -> int:
        return len(self.checkpoints)

    def load(self) -> ScanPipeline:
        """Build every fold's model (prepared for inference), the inferer and stage one; idempotent."""
        if self.models is not None:
            return self
        import torch

        from ..train.checkpoint import build_from_checkpoint, load_checkpoint

        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        t0 = time.perf_counter()
        if self.vessel_roi:
            return self._load_vessel_roi(t0)
        models, metas = [], []
        for fold, path in self.checkpoints.items():
            ckpt = load_checkpoint(path)
            models.append(prepare_model(build_from_checkpoint(ckpt), self.cfg.window.device, copy_model=False,
                                        precision=self.cfg.window.precision))
            metas.append({k: v for k, v in ckpt.items() if k != "state_dict"} | {"fold": fold, "path": str(path)})
            del ckpt
        self.meta = metas[0]
        patch = self.meta.get("patch") or {}
        roi = self.cfg.window.roi_size or tuple(patch.get("size") or DEFAULT_ROI)
        self.spacing_mm = float(self.cfg.spacing_mm or patch.get("spacing_mm") or DEFAULT_SPACING_MM)
        self.inferer = SlidingWindowInferer(dataclasses.replace(self.cfg.window, roi_size=tuple(int(r) for r in roi)))
        if self.two_stage:
            prior = np.asarray(self.fallback_values)[[LABEL_COLS.index(c) for c in LOCATION_COLS]]
            try:
                self.locator = load_region(self.run_dir, self.cfg.two_stage.atlas_sigma_mm, prior,
                                           device=str(self.inferer.device), fold=self.region_fold)
            except Exception as e:  # noqa: BLE001 - a broken stage one must not cost the intact fine model
                self.region_error = f"{type(e).__name__}: {e}"
                log.error("%s: stage one could not be loaded (%s); every series gets the head-geometry fallback "
                          "region", self.run_dir, self.region_error)
                self.locator = fallback_region_stage(self.run_dir, self.cfg.two_stage.atlas_sigma_mm, prior,
                                                     self.region_fold)
        self.models = models
        log.info("loaded %d fold model(s) from %s in %.1f s (window %s at %.2f mm, device %s, %s pipeline)",
                 len(models), self.run_dir, time.perf_counter() - t0, roi, self.spacing_mm, self.inferer.device,
                 self.name)
        return self

    def _load_vessel_roi(self, t0: float) -> ScanPipeline:
        """The vessel-ROI pipeline's parts: ROI classifiers, segmenter, vessel locator with its fallbacks."""
        from ..roi.stage import load_vessel_roi

        parts = load_vessel_roi(self.run_dir, self.checkpoints, self.cfg, self.region_fold)
        self.models, self.meta, self.locator, self.vessel_parts = parts.models, parts.meta, parts.locator, parts
        self.region_error = parts.region_error
        self.spacing_mm = float(self.cfg.spacing_mm or parts.preprocess_spacing_mm)
        log.info("loaded %d ROI classifier fold(s) from %s in %.1f s (ROI %s at %.2f mm, segmenter %s, device %s)",
                 len(self.models), self.run_dir, time.perf_counter() - t0, parts.roi.shape, parts.roi.spacing_mm,
                 parts.segmenter_source, parts.device)
        return self

    def preprocess_config(self, spacing_scale: float = 1.0) -> Any:
        """How a raw series is preprocessed for this pipeline (the training run's settings at the model spacing)."""
        self.load()
        return preprocess_config(self.meta, self.spacing_mm * spacing_scale)

    def predict(self, vol: Volume, mask: Volume | None, *, n_folds: int | None = None, tta: bool | None = None,
                spacing_scale: float = 1.0, want_heatmap: bool = True,
                on_batch: Callable[[int], None] | None = None) -> ScanResult:
        """The scan result of one preprocessed volume (canonical orientation) and its head mask.

        ``n_folds``: the first so many fold models (the budget ladder's choice; default all); ``tta``: the mirrored
        pass (default: the ``tta_flip`` setting); ``spacing_scale``: run at a coarser spacing than the model's;
        ``on_batch``: called with the number of windows of every forward pass (progress bars; the predictor's
        per-series deadline check, whose exception ends the prediction).
        """
        self.load()
        t0 = self.clock()
        tta = self.cfg.tta_flip if tta is None else tta
        models = self.models[: n_folds or len(self.models)]
        if self.vessel_roi:
            return self._predict_vessel_roi(vol, mask, models, tta, want_heatmap, on_batch, t0)
        flags: dict[str, Any] = {}
        vol, mask = self._to_model_grid(vol, mask, self.spacing_mm * spacing_scale, flags)
        vol, mask = crop_to_mask(vol, mask, self.cfg.crop_margin_mm)
        mask_arr = None if mask is None else mask.array
        t1 = self.clock()
        box = None
        if self.locator is not None:
            box = self.locator.locate(vol, mask_arr)
            image, grid = crop_region(vol, box, self.cfg.two_stage.fill_value)
            flags.update(region_source=box.source, region_reason=box.reason)
            window_mask = None
        else:
            image, grid = np.asarray(vol.array, dtype=np.float32), Grid(vol.origin, vol.spacing, vol.array.shape)
            window_mask = mask_arr
        t2 = self.clock()
        scan = predict_volume(models, image, window_mask, self.inferer, self.cfg.aggregate, tta=tta,
                              want_heatmap=want_heatmap or self.locator is not None, on_batch=on_batch)
        t3 = self.clock()
        if self.locator is not None:
            probs, peaks_w, peaks_p = apply_rules(scan.probs, scan.heatmap, grid, box.center, self.locator.atlas,
                                                  self.cfg.two_stage)
        else:
            probs, peaks_w, peaks_p = np.clip(np.asarray(scan.probs, dtype=np.float64), 0.0, 1.0), \
                np.zeros((0, 3)), np.zeros(0)
        self._replace_nonfinite(probs, flags, vol)
        heat = None
        if want_heatmap and scan.heatmap is not None:
            clipped = np.clip(scan.heatmap, 0.0, 1.0).astype(np.float32)
            heat = grid.volume(clipped, like=vol) if self.locator is not None else vol.with_array(clipped)
            heat.meta["kind"] = "heatmap"
        t4 = self.clock()
        timings = {"resample_s": t1 - t0, "region_s": t2 - t1, "model_s": t3 - t2 - scan.aggregate_s,
                   "aggregate_s": scan.aggregate_s + (t4 - t3), "total_s": t4 - t0}
        return ScanResult(probs=probs, heatmap=heat, region=box, grid=grid, peaks_world=peaks_w, peaks_prob=peaks_p,
                          n_windows=scan.n_windows, n_passes=scan.n_passes, timings=timings,
                          flags=flags | {"shape_kji": list(image.shape)})

    def _predict_vessel_roi(self, vol: Volume, mask: Volume | None, models: list[Any], tta: bool,
                            want_heatmap: bool, on_batch: Callable[[int], None] | None, t0: float) -> ScanResult:
        from ..roi.stage import predict_roi

        out = predict_roi(self.vessel_parts, vol, None if mask is None else np.asarray(mask.array), models, tta,
                          want_heatmap, on_batch, self.clock)
        probs = out.probs
        flags: dict[str, Any] = {"region_source": out.box.source, "region_reason": out.box.reason}
        self._replace_nonfinite(probs, flags, vol)
        heat = None
        if want_heatmap and out.sphere is not None:
            heat = out.grid.volume(np.clip(out.sphere, 0.0, 1.0).astype(np.float32), like=vol)
            heat.meta["kind"] = "heatmap"
        total = self.clock() - t0
        timings = {"resample_s": 0.0, "region_s": out.timings["segment_s"] + out.timings["roi_s"],
                   "model_s": out.timings["model_s"], "aggregate_s": max(total - sum(out.timings.values()), 0.0),
                   "total_s": total}
        return ScanResult(probs=probs, heatmap=heat, region=out.box, grid=out.grid, peaks_world=out.peaks_world,
                          peaks_prob=out.peaks_prob, n_windows=len(models), n_passes=2 if tta else 1,
                          timings=timings, flags=flags | {"shape_kji": list(out.grid.shape)})

    def _replace_nonfinite(self, probs: np.ndarray, flags: dict[str, Any], vol: Volume) -> None:
        """A fallback value beats a NaN in the submission: replace non-finite outputs in place and say which."""
        bad = ~np.isfinite(probs)
        if bad.any():
            flags["nonfinite"] = [LABEL_COLS[i] for i in np.flatnonzero(bad)]
            log.warning("%s: non-finite output for %s; those labels get the fallback value",
                        vol.meta.get("series_uid") or "series", flags["nonfinite"])
            probs[bad] = np.asarray(self.fallback_values)[bad]

    @staticmethod
    def _to_model_grid(vol: Volume, mask: Volume | None, spacing_mm: float, flags: dict[str, Any]
                       ) -> tuple[Volume, Volume | None]:
        """Volume (linear, float32) and mask (nearest) on the isotropic grid at ``spacing_mm``; unchanged when
        already there."""
        vol = vol.with_array(np.asarray(vol.array, dtype=np.float32))
        if np.allclose(vol.spacing, spacing_mm, atol=1e-3):
            return vol, mask
        from ..preprocess.geometry import resample

        flags["resampled_from_mm"] = [round(float(s), 4) for s in vol.spacing]
        out = resample(vol, (spacing_mm,) * 3, "linear")
        out = out.with_array(np.asarray(out.array, dtype=np.float32))
        if mask is not None:
            mask = resample(mask, interpolator="nearest", reference=out, default_value=0, dtype=np.uint8)
        return out, mask
