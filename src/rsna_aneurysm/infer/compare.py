"""Whole-scan, two-stage and vessel-ROI pipelines scored side by side on the same out-of-fold series.

``rsna-aneurysm pipelines --weights weights/<run>`` runs ``oof`` twice on the run's validation folds: once with the
whole-scan sliding window over the head, once with the two-stage pipeline (region finder, then the same fine model
on the region crop); ``--whole-weights`` puts a separately trained whole-scan run on the left instead. With
``--test DIR`` (a labelled test folder: ``test.csv``, ``series/``, ``solution.csv``, as the synthetic generator
writes) both predictors, built as the kernel builds them, also predict and score that test set. One report
(``report.md`` + ``report.json``) holds, per pipeline, the competition score (or the clearly labelled partial
score when a column holds one class) with its bootstrap interval, both halves, seconds per series, and stage one's
region recall and box size. ``--roi NAME=DIR`` adds vessel-ROI runs (``rsna-aneurysm roi train``; e.g. the run and
its ablation without segmentation pretraining); they must hold the same folds.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl

from ..constants import ID_COL, LABEL_COLS
from ..io.atomic import atomic_path, atomic_write_text
from ..io.tables import read_labels
from ..layout import TestDir
from .oof import OOFError, preprocessed_dir, run_oof
from .pipeline import PredictorConfig

N_BOOT = 500


def _score(oof: pl.DataFrame, labels: pl.DataFrame, n_boot: int = N_BOOT) -> dict[str, Any]:
    """The (partial) competition score of ``oof`` against ``labels``, both halves, and 95 % bootstrap intervals
    (``evaluate.report.confidence_intervals``; None where too few resamples hold both classes)."""
    import numpy as np

    from ..evaluate.metric import partial_score
    from ..evaluate.report import confidence_intervals

    truth = labels.filter(pl.col(ID_COL).is_in(oof[ID_COL].to_list())).select(ID_COL, *LABEL_COLS)
    parts = partial_score(truth, oof.select(ID_COL, *LABEL_COLS))
    out = {"score": parts.score, "aneurysm_auc": parts.aneurysm_auc, "location_auc": parts.location_mean_auc,
           "partial": parts.partial, "label": parts.label(), "single_class_columns": parts.single_class_columns}
    if n_boot > 0 and oof.height >= 4:
        joined = truth.join(oof.select(ID_COL, *LABEL_COLS), on=ID_COL, suffix="_pred").sort(ID_COL)
        y = joined.select(LABEL_COLS).to_numpy().astype(float)
        p = joined.select([f"{c}_pred" for c in LABEL_COLS]).to_numpy().astype(float)
        used = np.array([parts.aucs[c] is not None for c in LABEL_COLS])
        ci = confidence_intervals(y, p, used, n_boot=n_boot, seed=0)
        out["ci"] = {"score": ci["score"], "aneurysm_auc": ci["aneurysm_auc"],
                     "location_auc": ci["location_mean_auc"], "level": ci["level"], "n_boot": n_boot}
    return out


def score_test_set(run_dir: Path, test_dir: Path, cfg: PredictorConfig) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Predict every series of a labelled test folder (``test.csv``, ``series/``, ``solution.csv``) with the
    predictor as the kernel builds it (no budget, nothing deleted); the submission and its score."""
    from .predictor import Predictor

    test = TestDir(test_dir)
    predictor = Predictor(run_dir, replace(cfg, share_root=None, use_budget=False))
    uids = read_labels(test.test_csv)[ID_COL].to_list()
    t0 = time.perf_counter()
    rows = [predictor.predict(str(test.series(u))).with_columns(pl.lit(u).alias(ID_COL)) for u in uids]
    seconds = time.perf_counter() - t0
    sub = pl.concat(rows).select(ID_COL, *LABEL_COLS)
    solution = read_labels(test.solution_csv)
    return sub, {"series": len(uids), "seconds_per_series": seconds / max(len(uids), 1),
                 "fallback": predictor.n_fallback, **_score(sub, solution)}


def compare_pipelines(run_dir: str | Path, out_dir: str | Path, preprocessed: str | Path | None = None,
                      folds: list[int] | None = None, cfg: PredictorConfig | None = None,
                      whole_run: str | Path | None = None, test_dir: str | Path | None = None,
                      roi_runs: list[tuple[str, str | Path]] | None = None) -> dict[str, Any]:
    """Score the pipelines on the same series (out-of-fold, and the labelled test folder ``test_dir`` when
    given); write ``report.json`` and ``report.md`` in ``out_dir``. ``roi_runs``: (name, vessel-ROI run)."""
    run_dir, out = Path(run_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg or PredictorConfig()
    pre = preprocessed_dir(run_dir, preprocessed)
    labels = read_labels(pre.train_csv)
    rows: dict[str, dict[str, Any]] = {}
    entries = [("whole-scan", Path(whole_run or run_dir), "whole", "whole"),
               ("two-stage", run_dir, "two_stage", "two_stage")]
    for i, (name, roi) in enumerate(roi_runs or []):
        entries.append((name, Path(roi), "vessel_roi", f"vessel_roi_{i}"))
    for name, run, pipeline, tag in entries:
        t0 = time.perf_counter()
        oof = run_oof(run, pre.root, folds, replace(cfg, pipeline=pipeline), out / f"oof_{tag}.parquet")
        seconds = time.perf_counter() - t0
        row = {"run": str(run), "series": oof.height, "seconds_per_series": seconds / max(oof.height, 1),
               **_score(oof, labels)}
        row["series_uids"] = sorted(oof[ID_COL].to_list())
        regions = out / f"oof_{tag}_regions.json"
        if regions.is_file():
            row["region"] = json.loads(regions.read_text())
        if test_dir is not None:
            sub, row["test"] = score_test_set(run, Path(test_dir), replace(cfg, pipeline=pipeline))
            with atomic_path(out / f"test_{tag}.parquet") as tmp:
                sub.write_parquet(tmp)
        rows[name] = row
    reference = rows["two-stage"].pop("series_uids")
    for name, row in rows.items():
        if row.pop("series_uids", reference) != reference:
            raise OOFError(f"{name} predicted other out-of-fold series than two-stage; compare runs with the same "
                           "folds (--folds-table)")
    if test_dir is not None and len(rows) > 2:
        rows_diff = _paired_test_differences(out, Path(test_dir), [(n, t) for n, _, _, t in entries])
    else:
        rows_diff = None
    report = {"preprocessed": str(pre.root), "folds": folds, "test": None if test_dir is None else str(test_dir),
              "pipelines": rows, "test_differences": rows_diff}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.md", format_report(report))
    return report


def _paired_test_differences(out: Path, test_dir: Path, names: list[tuple[str, str]]) -> dict[str, Any]:
    """Each pipeline's test score minus two-stage's, with a paired bootstrap interval (the same resampled series
    for every pipeline: ``evaluate.report.paired_differences``)."""
    from ..evaluate.report import paired_differences

    solution = read_labels(TestDir(test_dir).solution_csv).sort(ID_COL)
    y = solution.select(LABEL_COLS).to_numpy().astype(float)
    preds = {}
    for name, tag in names:
        sub = pl.read_parquet(out / f"test_{tag}.parquet").sort(ID_COL)
        if sub[ID_COL].to_list() != solution[ID_COL].to_list():
            raise OOFError(f"{name}: the test predictions do not cover the solution's series")
        preds[name] = sub.select(LABEL_COLS).to_numpy().astype(float)
    return paired_differences(y, preds, "two-stage", n_boot=N_BOOT)


def _f(v: float | None, nd: int = 4) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _ci(r: dict[str, Any], key: str = "score") -> str:
    ci = (r.get("ci") or {}).get(key)
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def format_report(report: dict[str, Any]) -> str:
    """The side-by-side table (markdown); scores with their 95 % bootstrap interval."""
    p = report["pipelines"]
    lines = ["| pipeline | series | score [95 % CI] | Aneurysm Present AUC | mean location AUC | s / series | "
             "region recall | box (mm) | fallbacks |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in p.items():
        reg = r.get("region") or {}
        score = _f(r["score"]) + _ci(r) + (" (partial)" if r["partial"] else "")
        box = " x ".join(f"{v:g}" for v in reg["box_mm_mean"]) if reg else "whole head"
        recall = _f(reg.get("recall"), 3) if reg else "-"
        lines.append(f"| {name} | {r['series']} | {score} | {_f(r['aneurysm_auc'])} | {_f(r['location_auc'])} | "
                     f"{r['seconds_per_series']:.2f} | {recall} | {box} | {reg.get('fallback', '-')} |")
    for name, r in p.items():
        estimate = (r.get("region") or {}).get("estimate")
        if estimate and estimate != "out-of-fold":
            lines += ["", f"{name} region recall and score: {estimate} (train one finder per fold with "
                      "`rsna-aneurysm region train --per-fold` for an out-of-fold estimate)."]
    single = next(iter(p.values()))["single_class_columns"]
    if single:
        lines.append("")
        lines.append(f"Out-of-fold partial: {len(single)} column(s) hold a single class on these series and are "
                     f"left out (the leaderboard metric would be undefined): {', '.join(single)}.")
    if all("test" in r for r in p.values()):
        lines += ["", f"Test set {report.get('test')}:", "",
                  "| pipeline | series | score [95 % CI] | Aneurysm Present AUC | mean location AUC | s / series | "
                  "fallbacks |", "|---|---|---|---|---|---|---|"]
        for name, r in p.items():
            t = r["test"]
            score = _f(t["score"]) + _ci(t) + (" (partial)" if t["partial"] else " (strict)")
            lines.append(f"| {name} | {t['series']} | {score} | {_f(t['aneurysm_auc'])} | {_f(t['location_auc'])} | "
                         f"{t['seconds_per_series']:.2f} | {t['fallback']} |")
    diffs = report.get("test_differences")
    if diffs:
        lines += ["", "Test score minus two-stage's, paired bootstrap (the same resampled series for every "
                  "pipeline):", "", "| pipeline | difference [95 % CI] | resamples | share not better |",
                  "|---|---|---|---|"]
        for name, d in diffs.items():
            ci = f" [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if d["ci"] else " (too few resamples)"
            share = "-" if d["p_not_better"] is None else f"{d['p_not_better']:.2f}"
            lines.append(f"| {name} | {d['diff']:+.4f}{ci} | {d['n_valid']} | {share} |")
    return "\n".join(lines) + "\n"
