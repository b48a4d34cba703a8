"""``rsna-aneurysm oof`` (out-of-fold table for ``score``) and ``rsna-aneurysm predict`` (series folders -> rows).

Both take the predictor's settings as ``--config FILE`` (JSON of ``PredictorConfig``) and ``--key value``
overrides, e.g. ``--tta_flip false --aggregate.method topk_mean --window.overlap 0.5``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _folds(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--folds takes a comma list of integers, got {value!r}") from None


def _predictor_config(args: argparse.Namespace, weights: Path):
    from ..config import load_config, parse_overrides
    from .predictor import PREDICTOR_FILE, PredictorConfig

    path = args.config or (weights / PREDICTOR_FILE if (weights / PREDICTOR_FILE).is_file() else None)
    return load_config(PredictorConfig, path, parse_overrides(getattr(args, "overrides", []) or []))


def cmd_oof(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from .oof import OOFError, run_config, run_oof

    weights = Path(args.weights)
    try:
        cfg = _predictor_config(args, weights)
        oof = run_oof(weights, args.data, args.folds, cfg, args.out, args.limit)
    except (OOFError, ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else weights / "oof.parquet"
    print(f"wrote {out}: {oof.height} series, folds {sorted(set(oof['fold'].to_list()))}")
    pre = Path(args.data or (run_config(weights).get("data") or {}).get("preprocessed") or "")
    labels = pre / "train.csv"
    if not args.score:
        print(f"score it with --score, or: rsna-aneurysm score --pred {out} --labels {labels} --thresholds "
              f"{weights / 'thresholds.json'} (score wants a label row for every prediction and the other way "
              "round: with only some folds predicted, --score restricts the labels to them)")
        return 0
    import polars as pl

    from ..constants import ID_COL
    from ..evaluate.cli import score_tables
    from ..evaluate.metric import MetricError
    from ..evaluate.tables import TableError, read_table

    try:
        # Only the folds predicted here: score the series they cover.
        truth = read_table(labels)
        truth = truth.filter(pl.col(ID_COL).cast(pl.Utf8).is_in(oof[ID_COL].to_list()))
        score_tables(oof, truth, weights / "oof_report", n_boot=args.bootstrap,
                     thresholds_path=weights / "thresholds.json", pred_source=str(out), labels_source=str(labels))
    except (TableError, MetricError, ValueError) as e:
        print(f"error: cannot score {out} against {labels}: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from .predictor import Predictor, WeightsError

    weights = Path(args.weights)
    try:
        cfg = _predictor_config(args, weights)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    cfg.share_root = None  # local folders: nothing to delete
    if args.heatmaps:
        cfg.heatmap_dir = args.heatmaps
    try:
        predictor = Predictor.from_weights(weights, cfg)
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for series in args.series:
        row = predictor.predict(str(series)).row(0, named=True)
        out = {"series": str(series), **{k: round(v, 4) for k, v in row.items()}}
        decided = predictor.decisions(list(row.values()))
        if decided is not None:
            out["decisions"] = decided
        if predictor.records and predictor.records[-1].get("series") == Path(series).name:
            out["timing_s"] = {k: round(v, 3) for k, v in predictor.records[-1].items() if k.endswith("_s")}
        print(json.dumps(out, indent=None if args.compact else 2))
    summary = predictor.summary()
    print(f"{summary['predicted']} predicted, {summary['fallback']} fallback row(s)"
          + (f"; mean seconds {summary['mean_s']}" if "mean_s" in summary else ""))
    for reason in summary["fallback_reasons"]:
        print(f"  fallback: {reason}")
    return 0 if not summary["fallback"] else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("oof", help="out-of-fold scan-level predictions of a training run (the table score reads)",
                       description="Each fold's model predicts its own validation series from the preprocessed "
                                   "volumes. Predictor settings: --config FILE and --key value overrides.")
    p.add_argument("--weights", required=True, help="training run folder, weights/<run>")
    p.add_argument("--data", help="preprocessed folder (default: the run config's data.preprocessed)")
    p.add_argument("--folds", type=_folds, help="comma list of folds (default: every fold with a checkpoint)")
    p.add_argument("--out", help="output table (default <weights>/oof.parquet)")
    p.add_argument("--limit", type=int, help="at most this many series per fold")
    p.add_argument("--config", help="JSON file of predictor settings (default <weights>/predictor.json if any)")
    p.add_argument("--score", action="store_true",
                   help="also score the table against the preprocessed train.csv and write <weights>/thresholds.json")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples when scoring")
    p.set_defaults(func=cmd_oof, accepts_overrides=True)

    q = sub.add_parser("predict", help="predict DICOM series folders with a weights folder (JSON rows + timing)")
    q.add_argument("--weights", required=True, help="weights folder (training run or packaged weights dataset)")
    q.add_argument("series", nargs="+", help="series folders")
    q.add_argument("--heatmaps", help="write each series' heatmap as NIfTI into this folder (for the viewer)")
    q.add_argument("--config", help="JSON file of predictor settings (default <weights>/predictor.json if any)")
    q.add_argument("--compact", action="store_true", help="one JSON line per series")
    q.set_defaults(func=cmd_predict, accepts_overrides=True)
