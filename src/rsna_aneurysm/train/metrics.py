"""Patch-level validation metrics: the competition metric over the labelled columns, and the seed's metrics.

At patch level some location columns hold a single class (no positive patch of that location in the fold), so
the competition metric is the partial variant of ``rsna_aneurysm.evaluate.metric`` (such columns left out and
listed). The seed project's numbers (accuracy, sensitivity, specificity, ROC AUC and F2 on Aneurysm Present at a
threshold) are logged beside it.
"""

from __future__ import annotations

import numpy as np

from ..constants import LABEL_COLS
from ..evaluate.metric import AP_INDEX, parts_from_arrays


def binary_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, F2 at ``threshold`` and ROC AUC (NaN with one class) of one column."""
    from sklearn.metrics import roc_auc_score

    t = np.asarray(y_true).astype(bool)
    p = np.asarray(y_prob, dtype=np.float64)
    pred = p >= threshold
    tp, tn = int((pred & t).sum()), int((~pred & ~t).sum())
    fp, fn = int((pred & ~t).sum()), int((~pred & t).sum())
    nan = float("nan")
    sens = tp / (tp + fn) if tp + fn else nan
    prec = tp / (tp + fp) if tp + fp else 0.0
    f2 = 5 * prec * sens / (4 * prec + sens) if (prec + sens) > 0 and not np.isnan(sens) else 0.0
    return {
        "acc": (tp + tn) / max(len(t), 1),
        "sens": sens,
        "spec": tn / (tn + fp) if tn + fp else nan,
        "f2": f2,
        "auc": float(roc_auc_score(t, p)) if 0 < t.sum() < len(t) else nan,
    }


def patch_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float = 0.5) -> dict[str, object]:
    """All validation numbers of (N, 14) patch labels and probabilities.

    ``score``: partial competition metric; ``skipped``: columns it left out; ``auc`` ... ``f2``: Aneurysm Present.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    parts = parts_from_arrays(y_true, y_prob, list(LABEL_COLS))
    out: dict[str, object] = {"score": parts.score, "location_auc": parts.location_mean_auc,
                              "skipped": list(parts.single_class_columns)}
    out.update(binary_metrics(y_true[:, AP_INDEX], y_prob[:, AP_INDEX], threshold))
    return out
