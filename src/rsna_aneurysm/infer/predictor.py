"""The submission predictor: a weights folder in, ``predict(series_path) -> one-row DataFrame`` out, never raising.

Built from the weights folder alone (``Predictor.from_weights``): the fold checkpoints (``fold_<k>/best.pt`` of a
training run, or the flat ``fold_<k>.pt`` of the packaged weights dataset), plus optional ``predictor.json``
(these settings), ``prevalence.json`` (the fallback row) and ``thresholds.json`` (decisions from
``rsna-aneurysm score``). Nothing heavy happens before the first ``predict``, so the inference server starts at
once; models load on the first call.

Per series: read the DICOM folder, preprocess as in training (at the training patch spacing), then the scan
pipeline (:class:`~.pipeline.ScanPipeline`, the same object out-of-fold prediction, mining and the viewer use).
The predictor itself keeps only what a submission adds: the time-budget planner picks how much of the pipeline to
run; a series that fails anywhere (or that the budget cannot afford) gets the fallback row, the training
prevalence of each label, and a logged reason; the share folder is deleted after every call, as the competition
requires. Each series has a time limit (the planner's :meth:`~.budget.BudgetPlanner.series_limit`, at most
``budget.max_series_seconds``): a cooperative :class:`~.budget.Deadline` is checked after reading, after
preprocessing and after every sliding-window forward pass, and an overrun becomes a fallback row (counted in
``n_timeouts``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..config import load_config, to_dict
from ..constants import LABEL_COLS
from ..layout import RunDir, UnsafeUIDError, check_uid
from ..models.sliding_window import save_heatmap
from .budget import BudgetPlanner, CostLevel, Deadline, SeriesTimeout, build_ladder
from .pipeline import (
    PredictorConfig,
    ScanPipeline,
    WeightsError,
    find_checkpoints,
    read_prevalence,
    write_prevalence,
)

log = logging.getLogger(__name__)

__all__ = ["Predictor", "PredictorConfig", "WeightsError", "find_checkpoints", "read_prevalence",
           "write_prevalence"]


def _free_accelerator_memory() -> None:
    """After a failed series (often out of memory), give cached CUDA memory back so the next one can run."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort inside the per-series guard
        pass


def heatmap_name(vol: Any, series_path: str | Path) -> str:
    """``<uid>.nii.gz`` for the heatmap of a series: the header's SeriesInstanceUID when it is a safe file name, else
    the series folder's name (a header UID such as ``../../x`` must not write outside ``heatmap_dir``)."""
    uid = vol.meta.get("series_uid")
    try:
        return f"{check_uid(uid)}.nii.gz"
    except UnsafeUIDError:
        folder = Path(series_path).name
        log.warning("%s: header SeriesInstanceUID %r is not a safe file name; heatmap named after the folder",
                    series_path, str(uid)[:80])
        return f"{check_uid(folder, series_path)}.nii.gz"


class Predictor:
    """``predict(series_path)`` for the inference server; see the module docstring."""

    def __init__(self, run_dir: str | Path, cfg: PredictorConfig | None = None,
                 clock: Any = time.perf_counter) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = cfg or PredictorConfig()
        self.clock = clock
        self.pipeline = ScanPipeline(self.run_dir, self.cfg, clock=clock)  # checks the folder; loads on first call
        self.checkpoints = self.pipeline.checkpoints
        self.two_stage = self.pipeline.two_stage
        self.fallback_values = self.pipeline.fallback_values
        self.thresholds = self._thresholds()
        self.levels = build_ladder(self.cfg.tta_flip, len(self.checkpoints), self.cfg.budget.spacing_steps)
        self.planner = BudgetPlanner(self.cfg.budget, self.levels, clock=clock) if self.cfg.use_budget else None
        self.pre_cfg: dict[float, Any] = {}
        self.loaded = False
        self.load_error: str | None = None
        self.n_predicted = 0
        self.n_fallback = 0
        self.n_timeouts = 0
        self.fallback_reasons: list[tuple[str, str]] = []
        # Fallbacks per kind: the exception's name (e.g. GridTooLargeError, SeriesTimeout) or the reason's text.
        self.fallback_kinds: dict[str, int] = {}
        self.records: list[dict[str, Any]] = []  # per-series timing split and level

    @classmethod
    def from_weights(cls, run_dir: str | Path, cfg: PredictorConfig | None = None,
                     overrides: dict[str, Any] | None = None, clock: Any = time.perf_counter) -> Predictor:
        """Settings from ``cfg`` or ``<run_dir>/predictor.json`` (when present), then ``overrides``."""
        if cfg is None:
            path = RunDir(run_dir).predictor
            cfg = load_config(PredictorConfig, path if path.is_file() else None, overrides)
        elif overrides:
            from ..config import apply_overrides

            cfg = apply_overrides(cfg, overrides)
        return cls(run_dir, cfg, clock=clock)

    # -- set-up ------------------------------------------------------------------------------------------------
    def _thresholds(self) -> dict[str, float] | None:
        path = RunDir(self.run_dir).thresholds
        if not path.is_file():
            return None
        from ..evaluate.thresholds import ThresholdFileError, load_thresholds

        try:
            return load_thresholds(path)
        except ThresholdFileError as e:
            log.warning("ignoring thresholds: %s", e)
            return None

    def load(self) -> None:
        """Load the scan pipeline's models and the preprocessing of every budget level (the first ``predict``)."""
        self.pipeline.load()
        scales = sorted({lvl.spacing_scale for lvl in self.levels})
        self.pre_cfg = {s: self.pipeline.preprocess_config(s) for s in scales}
        self.loaded = True

    # -- prediction --------------------------------------------------------------------------------------------
    def predict(self, series_path: str) -> pl.DataFrame:
        """One-row DataFrame with the 14 label columns in submission order. Never raises (fallback row instead)."""
        t0 = self.clock()
        uid = Path(str(series_path)).name
        probs: list[float] | None = None
        level: CostLevel | None = None
        try:
            if not self.loaded and self.load_error is None:
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
                deadline = Deadline(self.series_limit(), clock=self.clock)
                try:
                    probs, rec = self._predict_series(series_path, level, deadline)
                except SeriesTimeout as e:
                    self.n_timeouts += 1
                    spent = self.clock() - t_start
                    self._fallback(uid, f"SeriesTimeout: {e}", timed_out=(level, spent))
                    probs = None
                    _free_accelerator_memory()
                else:
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

    def series_limit(self) -> float:
        """Seconds the next series may take: the planner's limit, or ``budget.max_series_seconds`` without it."""
        return self.planner.series_limit() if self.planner is not None else self.cfg.budget.max_series_seconds

    def _predict_series(self, series_path: str, level: CostLevel,
                        deadline: Deadline | None = None) -> tuple[list[float], dict[str, Any]]:
        from ..io.dicom import load_series
        from ..preprocess.pipeline import preprocess_volume

        clock = self.clock
        check = deadline.check if deadline is not None else (lambda step: None)
        t0 = clock()
        vol = load_series(series_path)
        check("reading")
        t1 = clock()
        vol, mask = preprocess_volume(vol, self.pre_cfg[level.spacing_scale])
        check("preprocessing")
        t2 = clock()
        res = self.pipeline.predict(vol, mask, n_folds=level.n_folds, tta=level.tta,
                                    spacing_scale=level.spacing_scale, want_heatmap=self.cfg.heatmap_dir is not None,
                                    on_batch=lambda n: check("a model batch"))
        t3 = clock()
        if res.heatmap is not None:
            out = Path(self.cfg.heatmap_dir) / heatmap_name(vol, series_path)
            save_heatmap(res.heatmap.array, res.heatmap, str(out))
        t4 = clock()
        tm = res.timings
        rec: dict[str, Any] = {"read_s": t1 - t0, "preprocess_s": t2 - t1 + tm["resample_s"],
                               "region_s": tm["region_s"], "model_s": tm["model_s"],
                               "aggregate_s": (t3 - t2) - tm["resample_s"] - tm["region_s"] - tm["model_s"] + (t4 - t3),
                               "windows": res.n_windows, "passes": res.n_passes, **res.flags}
        if res.region is not None:
            rec["region_box_mm"] = [round(float(v), 1) for v in res.region.size_mm]
        return res.probs.tolist(), rec

    def _fallback(self, uid: str, reason: str, timed_out: tuple[CostLevel, float] | None = None) -> None:
        self.n_fallback += 1
        self.fallback_reasons.append((uid, reason))
        head = reason.split(":", 1)[0]
        kind = head if ":" in reason and head.isidentifier() else reason.split(" (", 1)[0]
        self.fallback_kinds[kind] = self.fallback_kinds.get(kind, 0) + 1
        log.warning("%s: fallback row (training prevalence): %s", uid, reason)
        if self.planner is not None:
            if timed_out is not None:
                self.planner.record_timeout(*timed_out)
            else:
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
                               "timeouts": self.n_timeouts, "fallback_kinds": dict(self.fallback_kinds),
                               "fallback_reasons": [f"{u}: {r}" for u, r in self.fallback_reasons[:20]]}
        if self.records:
            keys = ("read_s", "preprocess_s", "region_s", "model_s", "aggregate_s", "total_s")
            out["mean_s"] = {k: round(float(np.mean([r[k] for r in self.records])), 3) for k in keys}
        if self.planner is not None:
            out["budget"] = self.planner.summary()
        out["pipeline"] = self.pipeline.name
        if self.pipeline.region_error:
            out["region_error"] = self.pipeline.region_error
        if self.two_stage and self.records:
            out["region_fallbacks"] = sum(r.get("region_source") == "fallback" for r in self.records)
        out["config"] = to_dict(self.cfg)
        return out

    def log_summary(self, every: int = 0) -> bool:
        """Log the summary (without the settings) as one JSON line; with ``every`` > 0 only after every ``every``-th
        series (the scored rerun's ``serve()`` never returns, so a summary at the end is never seen). True if
        logged."""
        done = self.n_predicted + self.n_fallback
        if every > 0 and (done == 0 or done % every):
            return False
        brief = {k: v for k, v in self.summary().items() if k != "config"}
        log.info("predictor summary after %d series: %s", done, json.dumps(brief, default=str))
        return True
