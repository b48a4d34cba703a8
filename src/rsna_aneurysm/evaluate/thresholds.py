"""Per-column decision thresholds that maximise F2 on out-of-fold predictions.

The leaderboard only ranks (AUC), but a kit user also wants yes/no answers (the seed project reported F2, which
weighs recall four times as much as precision, the right trade for a screening tool). A series is called
positive for a column when its probability is >= that column's threshold. Thresholds are stored as
``thresholds.json`` ``{column: threshold}`` in submission order for the inference side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..config import read_json_object
from ..constants import LABEL_COLS
from ..io.atomic import atomic_write_text

DEFAULT_THRESHOLD = 0.5


class ThresholdFileError(ValueError):
    """A thresholds file is missing, unreadable or does not hold one number per label column."""


def best_fbeta_threshold(y_true: np.ndarray, y_score: np.ndarray, beta: float = 2.0) -> dict[str, Any]:
    """Threshold maximising F-beta for "positive when score >= threshold", with its F-beta, precision and recall.

    Every distinct score is a candidate; among equal F-beta the highest threshold wins (fewest positives). Without
    any positive the F-beta is undefined: the threshold is ``DEFAULT_THRESHOLD`` and ``note`` says why.
    """
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    n_pos = float(y.sum())
    if n_pos == 0:
        return {"threshold": DEFAULT_THRESHOLD, "fbeta": None, "precision": None, "recall": None,
                "positives": 0, "note": "no positive in the labels: F-beta undefined, default threshold"}
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    # The last index of each run of equal scores: predicting positive down to there includes the whole tie.
    ends = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])
    tp = np.cumsum(y_desc)[ends]
    predicted = ends + 1.0
    fp = predicted - tp
    fn = n_pos - tp
    b2 = beta * beta
    fbeta = (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp)
    best = int(np.argmax(fbeta))  # first maximum = highest threshold
    return {"threshold": float(s_desc[ends[best]]), "fbeta": float(fbeta[best]),
            "precision": float(tp[best] / predicted[best]), "recall": float(tp[best] / n_pos),
            "positives": int(n_pos), "note": ""}


def calibrate_thresholds(y_true: np.ndarray, y_score: np.ndarray, columns: tuple[str, ...] = LABEL_COLS,
                         beta: float = 2.0) -> dict[str, dict[str, Any]]:
    """``best_fbeta_threshold`` for each column of aligned (n, len(columns)) arrays."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.shape[1] != len(columns):
        raise ValueError(f"expected two (n, {len(columns)}) arrays, got {y_true.shape} and {y_score.shape}")
    return {c: best_fbeta_threshold(y_true[:, j], y_score[:, j], beta) for j, c in enumerate(columns)}


def save_thresholds(thresholds: dict[str, float] | dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Write ``{column: threshold}`` (from plain numbers or ``calibrate_thresholds`` output) in submission order."""
    flat = {c: float(v["threshold"] if isinstance(v, dict) else v) for c, v in thresholds.items()}
    missing = [c for c in LABEL_COLS if c not in flat]
    if missing:
        raise ThresholdFileError(f"{path}: no threshold for {missing}")
    return atomic_write_text(path, json.dumps({c: flat[c] for c in LABEL_COLS}, indent=2) + "\n")


def load_thresholds(path: str | Path) -> dict[str, float]:
    """Read a ``thresholds.json``; every label column needs a number in [0, 1]."""
    path = Path(path)
    data = read_json_object(path, ThresholdFileError, "thresholds file")
    missing = [c for c in LABEL_COLS if c not in data]
    unknown = sorted(set(data) - set(LABEL_COLS))
    if missing or unknown:
        raise ThresholdFileError(f"{path}: missing columns {missing}, unknown columns {unknown}")
    out = {}
    for c in LABEL_COLS:
        v = data[c]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise ThresholdFileError(f"{path}: threshold for {c!r} must be a number in [0, 1], got {v!r}")
        out[c] = float(v)
    return out
