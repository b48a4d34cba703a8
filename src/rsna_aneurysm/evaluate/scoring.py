"""Score a prediction table against labels and write the report files: what ``score``, ``oof --score`` and the
``gateway``'s scoring of its submission share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from ..constants import ID_COL, LABEL_COLS
from ..layout import RunDir


def score_tables(pred: pl.DataFrame, labels: pl.DataFrame, out_dir: Path, n_boot: int = 1000, seed: int = 0,
                 beta: float = 2.0, thresholds_path: Path | None = None, pred_source: str = "predictions",
                 labels_source: str = "labels", thresholds: bool = True) -> tuple[dict[str, Any], list[Path]]:
    """Align, report, write report.json + plots (+ thresholds.json); returns (report, written paths).

    The strict leaderboard function is run too: its value, or why it is undefined, is in the report
    (``strict_score``, ``strict_error``). Mismatched ids or columns raise the table and metric errors.
    """
    from .metric import SingleClassColumnError, score
    from .report import build_report, write_report
    from .tables import align, label_frame, label_matrix, prediction_frame
    from .thresholds import calibrate_thresholds, save_thresholds

    labels = label_frame(labels, labels_source)
    pred = prediction_frame(pred, pred_source)
    labels, pred = align(labels, pred)
    y_true, y_score = label_matrix(labels), label_matrix(pred)
    modality = labels["Modality"].to_list() if "Modality" in labels.columns else None
    fold_col = pred if "fold" in pred.columns else labels if "fold" in labels.columns else None
    fold = fold_col["fold"].to_list() if fold_col is not None else None
    report = build_report(y_true, y_score, modality=modality, fold=fold, n_boot=n_boot, seed=seed)
    try:
        report["strict_score"] = score(labels.select(ID_COL, *LABEL_COLS), pred.select(ID_COL, *LABEL_COLS))
        report["strict_error"] = None
    except SingleClassColumnError as e:
        report["strict_score"], report["strict_error"] = None, str(e)
    if thresholds:
        thr = calibrate_thresholds(y_true, y_score, beta=beta)
        report["thresholds"] = {"beta": beta, "rule": "positive when probability >= threshold", "columns": thr}
    paths = [Path(p) for p in write_report(report, y_true, y_score, out_dir).values()]
    if thresholds:
        paths.append(Path(save_thresholds(thr, thresholds_path or RunDir(out_dir).thresholds)))
    return report, paths


def print_scored(report: dict[str, Any], paths: list[Path]) -> None:
    """The score table and the files written, as the commands print them."""
    from .report import format_table

    print(format_table(report))
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
