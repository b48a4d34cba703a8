"""The prediction folder the viewer reads (``--pred DIR``), and the heatmaps in it.

Layout (every file optional; docs/viewer.md):

- a table of scan-level probabilities, ``SeriesInstanceUID`` + the 14 label columns (by name): the first of
  ``predictions.parquet``, ``predictions.csv``, ``oof.parquet``, ``submission.parquet``, ``submission.csv``;
- ``heatmaps/<uid>.nii.gz`` (or ``<uid>.nii.gz`` directly in DIR, as ``rsna-aneurysm predict --heatmaps`` writes):
  float probabilities in [0, 1] with the geometry of the grid they were computed on; resampled through world
  coordinates onto the series' preprocessed grid when it differs;
- ``thresholds.json`` ``{label: threshold}`` (from ``rsna-aneurysm score``);
- the run's metrics: ``metrics.json`` (``{name: number}`` or a score report), else ``report.json`` or
  ``oof_report/report.json`` (``rsna-aneurysm score``), plus ``summary.json`` of a training run (best epoch per fold).

A training run folder (``weights/<run>``, with ``oof.parquet``, ``thresholds.json`` and ``oof_report/``) is therefore
a valid prediction folder as it is. Unreadable files become messages in ``problems``, never exceptions, except a
corrupt heatmap, which raises :class:`HeatmapError` when it is asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..constants import ID_COL, LABEL_COLS
from ..io.atomic import atomic_write_parquet
from ..volume import Volume
from .data import ViewerDataError

TABLE_NAMES = ("predictions.parquet", "predictions.csv", "oof.parquet", "submission.parquet", "submission.csv")
METRIC_NAMES = ("metrics.json", "report.json", "oof_report/report.json")
LIVE_TABLE = "predictions.parquet"
# Heatmap values may exceed [0, 1] by this much (float rounding of a blend) before the file is called invalid.
RANGE_TOLERANCE = 1e-3


class HeatmapError(ViewerDataError):
    """A heatmap file exists but cannot be shown: unreadable, not 3D, non-finite, outside [0, 1], or off the volume."""


def _read_table(path: Path) -> pl.DataFrame:
    if path.suffix == ".csv":
        return pl.read_csv(path, infer_schema_length=10000, schema_overrides={ID_COL: pl.Utf8})
    return pl.read_parquet(path)


def read_prediction_table(path: str | Path) -> pl.DataFrame:
    """``SeriesInstanceUID`` + the 14 labels as Float64 (``fold`` kept when present); raises ViewerDataError."""
    path = Path(path)
    try:
        df = _read_table(path)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise ViewerDataError(f"{path}: not a readable prediction table ({e})") from e
    missing = [c for c in (ID_COL, *LABEL_COLS) if c not in df.columns]
    if missing:
        raise ViewerDataError(f"{path}: missing column(s) {missing}")
    extra = ["fold"] if "fold" in df.columns else []
    try:
        return df.select([pl.col(ID_COL).cast(pl.Utf8), *[pl.col(c).cast(pl.Float64) for c in LABEL_COLS],
                          *extra])
    except pl.exceptions.PolarsError as e:
        raise ViewerDataError(f"{path}: label columns must be numeric ({e})") from e


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A metrics or report JSON file as a dict; raises ViewerDataError when unreadable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ViewerDataError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise ViewerDataError(f"{path}: expected a JSON object")
    return data


def summarize_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a score report (``score``, the two halves) or of a flat ``{name: number}`` file."""
    keys = {"score": "score", "aneurysm_auc": "Aneurysm Present AUC", "location_mean_auc": "location mean AUC"}
    out = {label: float(report[k]) for k, label in keys.items() if isinstance(report.get(k), (int, float))}
    if not out:
        out = {k: float(v) for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return out


def column_aucs(report: dict[str, Any]) -> dict[str, float | None]:
    """Per-label AUC of a score report (``columns.<label>.auc``); empty when the report has none."""
    cols = report.get("columns")
    if not isinstance(cols, dict):
        return {}
    return {c: (cols[c].get("auc") if isinstance(cols.get(c), dict) else None) for c in LABEL_COLS if c in cols}


def check_heatmap(heat: np.ndarray, path: Path) -> np.ndarray:
    """Float32 copy of a 3D probability map; raises HeatmapError on NaN/inf or values outside [0, 1]."""
    if heat.ndim != 3:
        raise HeatmapError(f"{path}: heatmap must be 3D, got shape {heat.shape}")
    heat = np.asarray(heat, dtype=np.float32)
    bad = int((~np.isfinite(heat)).sum())
    if bad:
        raise HeatmapError(f"{path}: heatmap holds {bad} non-finite value(s)")
    lo, hi = (float(heat.min()), float(heat.max())) if heat.size else (0.0, 0.0)
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise HeatmapError(f"{path}: heatmap values span [{lo:.3g}, {hi:.3g}], expected probabilities in [0, 1]")
    return np.clip(heat, 0.0, 1.0)


def heatmap_on_grid(heat: Volume, like: Volume, path: Path) -> np.ndarray:
    """The heatmap's values on ``like``'s grid: as is when the grids match, else resampled through world space."""
    same = (heat.array.shape == like.array.shape and np.allclose(heat.spacing, like.spacing, atol=1e-4)
            and np.allclose(heat.origin, like.origin, atol=1e-3) and np.allclose(heat.direction, like.direction,
                                                                                   atol=1e-5))
    if same:
        return heat.array
    from ..preprocess.geometry import resample

    out = resample(heat, interpolator="linear", reference=like, default_value=0.0, dtype=np.float32).array
    if float(heat.array.max(initial=0.0)) > 0 and float(out.max(initial=0.0)) <= 0:
        raise HeatmapError(f"{path}: the heatmap's grid does not overlap the series' volume (is it another "
                           "series' heatmap?)")
    return np.clip(out, 0.0, 1.0)


def load_heatmap_file(path: str | Path, like: Volume) -> np.ndarray:
    """A heatmap NIfTI checked (:func:`check_heatmap`) and put on ``like``'s grid; raises HeatmapError."""
    from ..io.nifti import read_volume

    path = Path(path)
    try:
        vol = read_volume(path, mmap=False)
    except (ValueError, OSError) as e:
        raise HeatmapError(f"{path}: cannot be read as a heatmap ({e})") from e
    vol = vol.with_array(check_heatmap(np.asarray(vol.array), path))
    return heatmap_on_grid(vol, like, path)


@dataclass
class PredictionSet:
    """What a prediction folder holds; see the module docstring. ``root`` None: an empty set."""

    root: Path | None = None
    table: pl.DataFrame | None = None
    table_source: str | None = None
    thresholds: dict[str, float] | None = None
    metrics: dict[str, Any] | None = None
    metrics_source: str | None = None
    fold_summary: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    def row(self, uid: str) -> dict[str, float] | None:
        """The 14 probabilities of a series (label order), or None when the table lacks it."""
        if self.table is None:
            return None
        hit = self.table.filter(pl.col(ID_COL) == uid)
        if hit.height == 0:
            return None
        return {c: float(v) for c, v in hit.select(LABEL_COLS).row(0, named=True).items()}

    def heatmap_path(self, uid: str) -> Path | None:
        """The series' heatmap file, when the folder has one."""
        if self.root is None:
            return None
        for p in (self.root / "heatmaps" / f"{uid}.nii.gz", self.root / "heatmaps" / f"{uid}.nii",
                  self.root / f"{uid}.nii.gz", self.root / f"{uid}.nii"):
            if p.is_file():
                return p
        return None

    def load_heatmap(self, uid: str, like: Volume) -> np.ndarray | None:
        """The heatmap on ``like``'s grid ``(k, j, i)``, None when there is none; HeatmapError when it is unusable."""
        path = self.heatmap_path(uid)
        return None if path is None else load_heatmap_file(path, like)


def _thresholds(path: Path, problems: list[str]) -> dict[str, float] | None:
    from ..evaluate.thresholds import ThresholdFileError, load_thresholds

    try:
        return load_thresholds(path)
    except ThresholdFileError as e:
        problems.append(f"thresholds ignored: {e}")
        return None


def open_predictions(*folders: str | Path | None) -> PredictionSet:
    """Read the first folder (``--pred``); later folders (``--weights``) fill in the table, thresholds and metrics
    it lacks. Heatmaps come from the first folder only.

    Missing folders give an empty set with a message in ``problems``.
    """
    folders_ = [Path(f) for f in folders if f]
    out = PredictionSet(root=folders_[0] if folders_ else None)
    for root in folders_:
        if not root.is_dir():
            out.problems.append(f"{root}: no such prediction folder")
            continue
        table_path = next((root / n for n in TABLE_NAMES if (root / n).is_file()), None)
        if out.table is None and table_path is not None:
            try:
                out.table, out.table_source = read_prediction_table(table_path), str(table_path)
            except ViewerDataError as e:
                out.problems.append(str(e))
        if out.thresholds is None and (root / "thresholds.json").is_file():
            out.thresholds = _thresholds(root / "thresholds.json", out.problems)
        if out.metrics is None:
            path = next((root / n for n in METRIC_NAMES if (root / n).is_file()), None)
            if path is not None:
                try:
                    out.metrics, out.metrics_source = read_metrics(path), str(path)
                except ViewerDataError as e:
                    out.problems.append(str(e))
        if out.fold_summary is None and (root / "summary.json").is_file():
            try:
                out.fold_summary = read_metrics(root / "summary.json")
            except ViewerDataError as e:
                out.problems.append(str(e))
    return out


def write_live_prediction(out_dir: str | Path, uid: str, probs: dict[str, float]) -> Path:
    """Insert or replace the series' row in ``out_dir/predictions.parquet`` (atomic); returns the table path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LIVE_TABLE
    schema = {ID_COL: pl.Utf8, **{c: pl.Float64 for c in LABEL_COLS}}
    row = pl.DataFrame([{ID_COL: uid, **{c: float(probs[c]) for c in LABEL_COLS}}], schema=schema)
    if path.is_file():
        try:
            old = read_prediction_table(path).select(list(schema))
        except ViewerDataError:
            old = pl.DataFrame(schema=schema)
        row = pl.concat([old.filter(pl.col(ID_COL) != uid), row])
    return atomic_write_parquet(row, path)
