"""The submission predictor: a weights folder in, ``predict(series_path) -> one-row DataFrame`` out, never raising.

Built from the weights folder alone (``Predictor.from_weights``): the fold checkpoints (``fold_<k>/best.pt`` of a
training run, or the flat ``fold_<k>.pt`` of the packaged weights dataset), plus optional ``predictor.json``
(these settings), ``prevalence.json`` (the fallback row) and ``thresholds.json`` (decisions from
``rsna-aneurysm score``). Nothing heavy happens before the first ``predict``, so the inference server starts at
once; models load on the first call.

Per series: read the DICOM folder, preprocess as in training (at the training patch spacing), crop to the head,
sliding windows per fold and flip pass, aggregate to 14 probabilities. The time-budget planner picks how much of
that to do; a series that fails anywhere (or that the budget cannot afford) gets the fallback row, the training
prevalence of each label, and a logged reason. The share folder is deleted after every call, as the competition
requires.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from ..config import from_dict, load_config, to_dict
from ..constants import LABEL_COLS, LOCATION_COLS
from ..region.infer import TwoStageConfig, has_region, load_region, predict_two_stage
from .aggregate import AggregateConfig
from .budget import BudgetConfig, BudgetPlanner, CostLevel, build_ladder
from .scan import crop_to_mask, predict_volume
from .sliding_window import SlidingWindowConfig, SlidingWindowInferer, prepare_model, save_heatmap

log = logging.getLogger(__name__)

PREDICTOR_FILE = "predictor.json"
PREVALENCE_FILE = "prevalence.json"
THRESHOLDS_FILE = "thresholds.json"


class WeightsError(FileNotFoundError):
    """A weights folder holds no usable checkpoint, or the folds asked for are missing."""


@dataclass
class PredictorConfig:
    """Settings of the submission predictor (``predictor.json`` in the weights folder, then overrides)."""

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
    # Whole-scan sliding windows, or the two-stage pipeline (region finder, then the fine model on the region crop;
    # needs stage one's files: region/ in a run folder, flat region.json etc. in the packaged weights dataset);
    # auto: two-stage whenever the weights have them.
    pipeline: Literal["auto", "whole", "two_stage"] = "auto"
    two_stage: TwoStageConfig = field(default_factory=TwoStageConfig)


def find_checkpoints(run_dir: str | Path, which: str = "best") -> dict[int, Path]:
    """Fold -> checkpoint path, from ``fold_<k>/<which>.pt`` (a training run) or ``fold_<k>.pt`` (packaged)."""
    run_dir = Path(run_dir)
    found: dict[int, Path] = {}
    for p in run_dir.glob("fold_*"):
        stem = p.name[len("fold_"):]
        if p.is_dir() and stem.isdigit() and (p / f"{which}.pt").is_file():
            found[int(stem)] = p / f"{which}.pt"
        elif p.is_file() and p.suffix == ".pt" and stem[:-3].isdigit():
            found.setdefault(int(stem[:-3]), p)
    return dict(sorted(found.items()))


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
    """Mean of each label column of a train.csv -> ``prevalence.json`` (the predictor's fallback row)."""
    df = pl.read_csv(train_csv, columns=list(LABEL_COLS))
    if df.height == 0:
        raise ValueError(f"{train_csv}: no rows to compute the label prevalence from")
    data = {c: float(df[c].cast(pl.Float64).mean()) for c in LABEL_COLS}
    out = Path(out)
    out.write_text(json.dumps(data, indent=2) + "\n")
    return out


def _preprocess_config(meta: dict[str, Any], spacing_mm: float) -> Any:
    """The training run's PreprocessConfig (unknown keys dropped) at ``spacing_mm`` isotropic, without writing."""
    from ..preprocess.pipeline import PreprocessConfig

    known = {f.name for f in dataclasses.fields(PreprocessConfig)}
    saved = {k: v for k, v in (meta.get("preprocessing") or {}).items() if k in known}
    cfg = from_dict(PreprocessConfig, saved)
    return dataclasses.replace(cfg, spacing=(spacing_mm,) * 3, write_nifti=False)


def _free_accelerator_memory() -> None:
    """After a failed series (often out of memory), give cached CUDA memory back so the next one can run."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort inside the per-series guard
        pass


class Predictor:
    """``predict(series_path)`` for the inference server; see the module docstring."""

    def __init__(self, run_dir: str | Path, cfg: PredictorConfig | None = None,
                 clock: Any = time.perf_counter) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = cfg or PredictorConfig()
        self.clock = clock
        all_ckpts = find_checkpoints(self.run_dir, self.cfg.checkpoint)
        if not all_ckpts:
            raise WeightsError(f"{self.run_dir}: no fold_<k>/{self.cfg.checkpoint}.pt nor fold_<k>.pt checkpoint")
        folds = self.cfg.folds if self.cfg.folds is not None else list(all_ckpts)
        missing = [f for f in folds if f not in all_ckpts]
        if missing or not folds:
            raise WeightsError(f"{self.run_dir}: no checkpoint for fold(s) {missing or folds}; found {list(all_ckpts)}")
        self.checkpoints = {f: all_ckpts[f] for f in folds}
        self.fallback_values = self._fallback_values()
        self.thresholds = self._thresholds()
        self.levels = build_ladder(self.cfg.tta_flip, len(self.checkpoints), self.cfg.budget.spacing_steps)
        self.planner = BudgetPlanner(self.cfg.budget, self.levels, clock=clock) if self.cfg.use_budget else None
        if self.cfg.pipeline == "two_stage" and not has_region(self.run_dir):
            raise WeightsError(f"{self.run_dir}: pipeline two_stage needs region/region.json (rsna-aneurysm region "
                               "train)")
        self.two_stage = self.cfg.pipeline != "whole" and has_region(self.run_dir)
        self.region = None
        self.models: list[Any] | None = None
        self.meta: dict[str, Any] = {}
        self.load_error: str | None = None
        self.n_predicted = 0
        self.n_fallback = 0
        self.fallback_reasons: list[tuple[str, str]] = []
        self.records: list[dict[str, Any]] = []  # per-series timing split and level

    @classmethod
    def from_weights(cls, run_dir: str | Path, cfg: PredictorConfig | None = None,
                     overrides: dict[str, Any] | None = None, clock: Any = time.perf_counter) -> Predictor:
        """Settings from ``cfg`` or ``<run_dir>/predictor.json`` (when present), then ``overrides``."""
        if cfg is None:
            path = Path(run_dir) / PREDICTOR_FILE
            cfg = load_config(PredictorConfig, path if path.is_file() else None, overrides)
        elif overrides:
            from ..config import apply_overrides

            cfg = apply_overrides(cfg, overrides)
        return cls(run_dir, cfg, clock=clock)

    # -- set-up ------------------------------------------------------------------------------------------------
    def _fallback_values(self) -> list[float]:
        if self.cfg.prevalence is not None:
            if len(self.cfg.prevalence) != len(LABEL_COLS):
                raise ValueError(f"predictor setting 'prevalence' needs {len(LABEL_COLS)} values")
            return [float(v) for v in self.cfg.prevalence]
        path = self.run_dir / PREVALENCE_FILE
        if path.is_file():
            return read_prevalence(path)
        log.warning("%s: no %s; fallback rows will be 0.5 for every label", self.run_dir, PREVALENCE_FILE)
        return [0.5] * len(LABEL_COLS)

    def _thresholds(self) -> dict[str, float] | None:
        path = self.run_dir / THRESHOLDS_FILE
        if not path.is_file():
            return None
        from ..evaluate.thresholds import ThresholdFileError, load_thresholds

        try:
            return load_thresholds(path)
        except ThresholdFileError as e:
            log.warning("ignoring thresholds: %s", e)
            return None

    def load(self) -> None:
        """Load and prepare every fold's model (called by the first ``predict``)."""
        import torch

        from ..train.checkpoint import build_from_checkpoint, load_checkpoint

        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        t0 = self.clock()
        models, metas = [], []
        for fold, path in self.checkpoints.items():
            ckpt = load_checkpoint(path)
            models.append(prepare_model(build_from_checkpoint(ckpt), self.cfg.window.device, copy_model=False,
                                        precision=self.cfg.window.precision))
            metas.append({k: v for k, v in ckpt.items() if k != "state_dict"} | {"fold": fold, "path": str(path)})
            del ckpt
        self.meta = metas[0]
        patch = self.meta.get("patch") or {}
        roi = self.cfg.window.roi_size or tuple(patch.get("size") or (64, 64, 64))
        self.spacing_mm = float(self.cfg.spacing_mm or patch.get("spacing_mm") or 1.0)
        self.inferer = SlidingWindowInferer(dataclasses.replace(self.cfg.window, roi_size=tuple(int(r) for r in roi)))
        self.pre_cfg = {s: _preprocess_config(self.meta, self.spacing_mm * s)
                        for s in sorted({lvl.spacing_scale for lvl in self.levels})}
        if self.two_stage:
            prior = np.asarray(self.fallback_values)[[LABEL_COLS.index(c) for c in LOCATION_COLS]]
            self.region = load_region(self.run_dir, self.cfg.two_stage.atlas_sigma_mm, prior,
                                      device=str(self.inferer.device))
        self.models = models
        log.info("loaded %d fold model(s) from %s in %.1f s (window %s at %.2f mm, device %s, %s pipeline)",
                 len(models), self.run_dir, self.clock() - t0, roi, self.spacing_mm, self.inferer.device,
                 "two-stage" if self.two_stage else "whole-scan")

    # -- prediction --------------------------------------------------------------------------------------------
    def predict(self, series_path: str) -> pl.DataFrame:
        """One-row DataFrame with the 14 label columns in submission order. Never raises (fallback row instead)."""
        t0 = self.clock()
        uid = Path(str(series_path)).name
        probs: list[float] | None = None
        level: CostLevel | None = None
        try:
            if self.models is None and self.load_error is None:
                try:
                    self.load()
                except Exception as e:  # noqa: BLE001 - every later series falls back, with the reason logged
                    self.load_error = f"{type(e).__name__}: {e}"
            t_start = self.clock()  # model loading is not series time
            if self.load_error is not None:
                reason = f"models could not be loaded ({self.load_error})"
            else:
                level = self.planner.choose() if self.planner is not None else self.levels[0]
                reason = "time budget exhausted" if level is None else ""
            if level is not None:
                probs, rec = self._predict_series(series_path, level)
                rec.update(series=uid, level=level.name, total_s=self.clock() - t_start)
                self.records.append(rec)
                if self.planner is not None:
                    self.planner.record(level, rec["total_s"], rec["model_s"])
                self.n_predicted += 1
            else:
                self._fallback(uid, reason)
        except Exception as e:  # noqa: BLE001 - the kernel's per-series guard: a fallback row is the right answer
            self._fallback(uid, f"{type(e).__name__}: {e}")
            probs = None
            _free_accelerator_memory()
        finally:
            self._clear_share()
        values = probs if probs is not None else self.fallback_values
        log.debug("%s: %.2f s", uid, self.clock() - t0)
        return pl.DataFrame({c: [float(v)] for c, v in zip(LABEL_COLS, values)},
                            schema={c: pl.Float64 for c in LABEL_COLS})

    __call__ = predict

    def _predict_series(self, series_path: str, level: CostLevel) -> tuple[list[float], dict[str, float]]:
        from ..io.dicom import load_series
        from ..preprocess.pipeline import preprocess_volume

        clock = self.clock
        t0 = clock()
        vol = load_series(series_path)
        t1 = clock()
        vol, mask = preprocess_volume(vol, self.pre_cfg[level.spacing_scale])
        vol, mask = crop_to_mask(vol, mask, self.cfg.crop_margin_mm)
        t2 = clock()
        region_rec: dict[str, Any] = {}
        heat_like = vol
        if self.region is not None:
            two = predict_two_stage(self.models[: level.n_folds], vol, None if mask is None else mask.array,
                                    self.region, self.inferer, self.cfg.aggregate, self.cfg.two_stage, tta=level.tta)
            pred = two.scan
            if self.cfg.heatmap_dir is not None:  # the heatmap covers the region crop: write it on that grid
                heat_like = two.grid.volume(np.zeros(two.grid.shape, dtype=np.float32), like=vol)
            region_rec = {"region_s": two.region_s, "region_source": two.box.source,
                          "region_box_mm": [round(float(v), 1) for v in two.box.size_mm]}
        else:
            pred = predict_volume(self.models[: level.n_folds], vol.array, None if mask is None else mask.array,
                                  self.inferer, self.cfg.aggregate, tta=level.tta,
                                  want_heatmap=self.cfg.heatmap_dir is not None)
        t3 = clock()
        probs = np.asarray(pred.probs, dtype=np.float64)
        bad = ~np.isfinite(probs)
        if bad.any():
            log.warning("%s: non-finite output for %s; those labels get the fallback value", series_path,
                        [LABEL_COLS[i] for i in np.flatnonzero(bad)])
            probs[bad] = np.asarray(self.fallback_values)[bad]
        if self.cfg.heatmap_dir is not None and pred.heatmap is not None:
            uid = str(vol.meta.get("series_uid") or Path(series_path).name)
            save_heatmap(pred.heatmap, heat_like, str(Path(self.cfg.heatmap_dir) / f"{uid}.nii.gz"))
        t4 = clock()
        region_s = float(region_rec.get("region_s", 0.0))
        rec = {"read_s": t1 - t0, "preprocess_s": t2 - t1, "region_s": region_s,
               "model_s": t3 - t2 - pred.aggregate_s - region_s, "aggregate_s": pred.aggregate_s + (t4 - t3),
               "windows": pred.n_windows, "passes": pred.n_passes, "shape_kji": list(vol.array.shape),
               **{k: v for k, v in region_rec.items() if k != "region_s"}}
        return probs.tolist(), rec

    def _fallback(self, uid: str, reason: str) -> None:
        self.n_fallback += 1
        self.fallback_reasons.append((uid, reason))
        log.warning("%s: fallback row (training prevalence): %s", uid, reason)
        if self.planner is not None:
            self.planner.record_fallback()

    def _clear_share(self) -> None:
        """Delete the share folder (the competition's rule: the disk fills up otherwise)."""
        root = self.cfg.share_root
        if not root:
            return
        path = Path(os.path.abspath(root))
        if len(path.parts) < 3:  # never "/" or a top-level folder, whatever the setting says
            log.error("refusing to delete share root %s: too close to the file-system root", path)
            return
        shutil.rmtree(path, ignore_errors=True)

    # -- reporting ---------------------------------------------------------------------------------------------
    def decisions(self, probs: list[float] | np.ndarray) -> dict[str, int] | None:
        """0/1 per label from the calibrated thresholds (None when the weights folder has none)."""
        if self.thresholds is None:
            return None
        from .aggregate import apply_thresholds

        return dict(zip(LABEL_COLS, apply_thresholds(np.asarray(probs), self.thresholds).tolist()))

    def summary(self) -> dict[str, Any]:
        """Counts, fallback reasons, mean timing split and the budget planner's state."""
        out: dict[str, Any] = {"predicted": self.n_predicted, "fallback": self.n_fallback,
                               "fallback_reasons": [f"{u}: {r}" for u, r in self.fallback_reasons[:20]]}
        if self.records:
            keys = ("read_s", "preprocess_s", "region_s", "model_s", "aggregate_s", "total_s")
            out["mean_s"] = {k: round(float(np.mean([r[k] for r in self.records])), 3) for k in keys}
        if self.planner is not None:
            out["budget"] = self.planner.summary()
        out["pipeline"] = "two-stage" if self.two_stage else "whole-scan"
        if self.two_stage and self.records:
            out["region_fallbacks"] = sum(r.get("region_source") == "fallback" for r in self.records)
        out["config"] = to_dict(self.cfg)
        return out
