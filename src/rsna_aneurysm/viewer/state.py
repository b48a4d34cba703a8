"""What the app shows, computed without streamlit: settings from the environment, the series table with scores,
the starting cursor, and which prediction source answers for a series.

The streamlit script (``app.py``) only lays these out, so the logic is testable on its own.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..constants import ANEURYSM_PRESENT, ID_COL, LABEL_COLS
from .data import SeriesData, default_cache_dir
from .predictions import PredictionSet

ENV_DATA = "RSNA_VIEWER_DATA"
ENV_PRED = "RSNA_VIEWER_PRED"
ENV_WEIGHTS = "RSNA_VIEWER_WEIGHTS"
ENV_CACHE = "RSNA_VIEWER_CACHE"


@dataclass(frozen=True)
class ViewerSettings:
    """The folders the app works on (from ``rsna-aneurysm view`` through environment variables)."""

    data: str | None
    pred: str | None
    weights: str | None
    cache: str | None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ViewerSettings:
        env = dict(os.environ if env is None else env)
        return cls(*(env.get(k) or None for k in (ENV_DATA, ENV_PRED, ENV_WEIGHTS, ENV_CACHE)))

    def to_env(self) -> dict[str, str]:
        pairs = ((ENV_DATA, self.data), (ENV_PRED, self.pred), (ENV_WEIGHTS, self.weights), (ENV_CACHE, self.cache))
        return {k: str(v) for k, v in pairs if v}

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache) if self.cache else default_cache_dir(self.data or ".")

    @property
    def live_dir(self) -> Path | None:
        """Where predictions run from the app go: one folder per weights folder inside the cache."""
        if not self.weights:
            return None
        digest = hashlib.sha1(str(Path(self.weights).resolve()).encode()).hexdigest()[:10]
        return self.cache_dir / f"live_{Path(self.weights).name}_{digest}"

    @property
    def pred_folders(self) -> tuple[str, ...]:
        """``--pred`` then ``--weights`` (a training run is a prediction folder: oof.parquet, thresholds, report)."""
        return tuple(f for f in (self.pred or self.weights, self.weights) if f)


def score_table(series: pl.DataFrame, *sets: PredictionSet) -> pl.DataFrame:
    """The series table with ``score`` (Aneurysm Present probability) from the first set that has the series."""
    score = pl.Series("score", [None] * series.height, dtype=pl.Float64)
    for ps in reversed(sets):  # earlier sets win
        if ps.table is None:
            continue
        lookup = dict(zip(ps.table[ID_COL].to_list(), ps.table[ANEURYSM_PRESENT].to_list()))
        new = [lookup.get(u) for u in series[ID_COL].to_list()]
        score = pl.Series("score", [n if n is not None else o for n, o in zip(new, score.to_list())],
                          dtype=pl.Float64)
    return series.with_columns(score)


def filter_series(table: pl.DataFrame, search: str = "", modalities: list[str] | None = None) -> pl.DataFrame:
    """Rows whose uid contains ``search`` (case-insensitive, spaces ignored) and whose modality is selected."""
    out = table
    needle = "".join(search.split()).lower()
    if needle:
        out = out.filter(pl.col(ID_COL).str.to_lowercase().str.contains(needle, literal=True))
    if modalities:
        out = out.filter(pl.col("Modality").is_in(modalities))
    return out


def series_label(row: dict[str, Any]) -> str:
    """One line for the picker: the uid's tail, modality, truth and score."""
    uid = str(row[ID_COL])
    truth = row.get(ANEURYSM_PRESENT)
    mark = "?" if truth is None else ("positive" if truth else "negative")
    score = row.get("score")
    tail = uid if len(uid) <= 28 else "…" + uid[-27:]
    return f"{tail} · {row.get('Modality') or '?'} · {mark}" + (f" · p={score:.2f}" if score is not None else "")


def initial_cursor(series: SeriesData) -> tuple[int, int, int]:
    """Start at the first ground-truth point, else the centre of the head mask, else the volume's centre."""
    shape = series.volume.array.shape
    pts = series.gt_points()
    if pts:
        p = np.asarray([pts[0]["k"], pts[0]["j"], pts[0]["i"]])
    elif series.mask is not None and np.asarray(series.mask.array).any():
        p = np.argwhere(np.asarray(series.mask.array) > 0).mean(axis=0)
    else:
        p = (np.asarray(shape) - 1) / 2
    return tuple(int(np.clip(np.rint(v), 0, n - 1)) for v, n in zip(p, shape))


def prediction_rows(probs: dict[str, float] | None, thresholds: dict[str, float] | None,
                    labels: dict[str, int] | None, aucs: dict[str, float | None] | None = None) -> pl.DataFrame:
    """The predictions panel's table: one row per label with probability, threshold, call, truth and run AUC."""
    rows = []
    for c in LABEL_COLS:
        p = None if probs is None else probs.get(c)
        t = None if thresholds is None else thresholds.get(c)
        rows.append({"label": c, "probability": p, "threshold": t,
                     "call": (None if p is None or t is None else ("positive" if p >= t else "negative")),
                     "truth": None if labels is None else labels.get(c),
                     "run AUC": None if not aucs else aucs.get(c)})
    schema = {"label": pl.Utf8, "probability": pl.Float64, "threshold": pl.Float64, "call": pl.Utf8,
              "truth": pl.Int64, "run AUC": pl.Float64}
    return pl.DataFrame(rows, schema=schema)
