"""Inference commands: ``oof`` (out-of-fold table for ``score``), ``pipelines`` (whole-scan vs two-stage),
``mine`` (hard negatives), ``predict`` (series folders -> rows) and ``gateway`` (the local competition API).

The predictor's settings are ``--config`` (JSON of ``PredictorConfig``; default ``<weights>/predictor.json``) and
``--key value`` overrides, e.g. ``--tta_flip false --aggregate.method topk_mean --window.overlap 0.5``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..cli_common import (
    PROG,
    CommandError,
    UsageError,
    add_command,
    add_config_argument,
    add_folds_argument,
    add_weights_argument,
    overrides,
    resolve_config,
)

_SETTINGS = "Predictor settings: --config and --key value overrides."


def predictor_config(args: argparse.Namespace, weights: str | Path) -> Any:
    """``PredictorConfig`` of a command: ``--config`` (else ``<weights>/predictor.json`` if any), then overrides."""
    from ..config import load_config
    from ..layout import RunDir
    from .pipeline import PredictorConfig

    default = RunDir(weights).predictor
    path = resolve_config(args.config) if args.config else (default if default.is_file() else None)
    return load_config(PredictorConfig, path, overrides(args))


def _add_predictor_config(p: argparse.ArgumentParser) -> None:
    add_config_argument(p, "predictor settings (default <weights>/predictor.json if any)")


def _test_dir(value: str | None) -> Path | None:
    """``--test``: a labelled test folder, or a competition folder (its ``test/``)."""
    if value is None:
        return None
    test = Path(value)
    return test / "test" if (test / "test").is_dir() else test


# -- oof ----------------------------------------------------------------------------------------------------------

def add_oof_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "oof", cmd_oof, overrides=True,
                    help="out-of-fold scan-level predictions of a training run (the table score reads)",
                    description="Each fold's model predicts its own validation series from the preprocessed "
                                f"volumes. {_SETTINGS}")
    add_weights_argument(p, "training run folder")
    p.add_argument("--data", help="preprocessed folder (default: the run config's data.preprocessed)")
    add_folds_argument(p, "folds to predict (default: every fold with a checkpoint)")
    p.add_argument("--out", help="output table (default <weights>/oof.parquet)")
    p.add_argument("--limit", type=int, help="at most this many series per fold")
    _add_predictor_config(p)
    p.add_argument("--score", action="store_true",
                   help="also score the table against the preprocessed train.csv and write <weights>/thresholds.json")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples when scoring")
    return p


def cmd_oof(args: argparse.Namespace) -> int:
    from ..layout import RunDir
    from .oof import run_config, run_oof

    run = RunDir(args.weights)
    cfg = predictor_config(args, run.root)
    oof = run_oof(run.root, args.data, args.folds, cfg, args.out, args.limit)
    out = Path(args.out) if args.out else run.oof
    print(f"wrote {out}: {oof.height} series, folds {sorted(set(oof['fold'].to_list()))}")
    pre = Path(args.data or (run_config(run.root).get("data") or {}).get("preprocessed") or "")
    labels = pre / "train.csv"
    if not args.score:
        print(f"score it with --score, or: {PROG} score --pred {out} --labels {labels} --thresholds "
              f"{run.thresholds} (score wants a label row for every prediction and the other way "
              "round: with only some folds predicted, --score restricts the labels to them)")
        return 0
    import polars as pl

    from ..constants import ID_COL
    from ..evaluate.scoring import print_scored, score_tables
    from ..evaluate.tables import read_table

    # Only the folds predicted here: score the series they cover.
    truth = read_table(labels)
    truth = truth.filter(pl.col(ID_COL).cast(pl.Utf8).is_in(oof[ID_COL].to_list()))
    report, paths = score_tables(oof, truth, run.root / "oof_report", n_boot=args.bootstrap,
                                 thresholds_path=run.thresholds, pred_source=str(out), labels_source=str(labels))
    print_scored(report, paths)
    return 0


# -- pipelines, mine ----------------------------------------------------------------------------------------------

def add_pipelines_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "pipelines", cmd_pipelines, overrides=True,
                    help="whole-scan vs two-stage pipeline, side by side on the same OOF series",
                    description="Runs oof with both pipelines on the run's validation folds and writes one "
                                f"report. {_SETTINGS}")
    add_weights_argument(p, "two-stage run folder (fine model + region/)")
    p.add_argument("--whole-weights", metavar="DIR",
                   help="a separately trained whole-scan run (default: the same fine model)")
    p.add_argument("--data", help="preprocessed folder (default: the run config's data.preprocessed)")
    add_folds_argument(p, "folds to compare on (default: every fold with a checkpoint)")
    p.add_argument("--test", help="labelled test folder (test.csv, series/, solution.csv) or a synthetic DATA folder "
                                  "to score both pipelines on as well")
    p.add_argument("--roi", action="append", default=[], metavar="NAME=DIR",
                   help="also score this vessel-ROI run (rsna-aneurysm roi train) under NAME; repeatable")
    p.add_argument("--out", help="report folder (default <weights>/pipelines)")
    _add_predictor_config(p)
    return p


def _roi_runs(values: list[str]) -> list[tuple[str, str]]:
    out = []
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--roi needs NAME=DIR, got {v!r}")
        out.append((name, path))
    return out


def cmd_pipelines(args: argparse.Namespace) -> int:
    from .compare import compare_pipelines, format_report

    weights = Path(args.weights)
    cfg = predictor_config(args, weights)
    out = Path(args.out) if args.out else weights / "pipelines"
    report = compare_pipelines(weights, out, args.data, args.folds, cfg, args.whole_weights, _test_dir(args.test),
                               roi_runs=_roi_runs(args.roi))
    print(format_report(report), end="")
    print(f"wrote {out / 'report.md'} and report.json")
    return 0


def add_mine_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "mine", cmd_mine, overrides=True,
                    help="hard-negative mining: a model's false positives on its training series",
                    description=f"Writes the table cache.mined_negatives reads. {_SETTINGS}")
    add_weights_argument(p, "run folder")
    p.add_argument("--fold", type=int, default=0, help="the one fold whose model mines its training series")
    p.add_argument("--data", help="preprocessed folder (default: the run config's data.preprocessed)")
    p.add_argument("--top-k", type=int, default=8, help="heatmap peaks looked at per series")
    p.add_argument("--min-heat", type=float, default=0.2, help="weaker peaks are left out")
    p.add_argument("--safety-mm", type=float, default=12.0, help="peaks nearer an aneurysm are left out")
    p.add_argument("--out", help="output table (default <preprocessed>/mined_negatives.parquet)")
    _add_predictor_config(p)
    return p


def cmd_mine(args: argparse.Namespace) -> int:
    from .mine import mine_negatives

    cfg = predictor_config(args, args.weights)
    mined = mine_negatives(args.weights, args.data, args.fold, args.top_k, args.min_heat, args.safety_mm,
                           cfg=cfg, out=args.out)
    n_series = mined["SeriesInstanceUID"].n_unique() if mined.height else 0
    print(f"mined {mined.height} false-positive positions in {n_series} series"
          + (f" (heat median {mined['heat'].median():.3f})" if mined.height else ""))
    return 0


# -- predict ------------------------------------------------------------------------------------------------------

def add_predict_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "predict", cmd_predict, overrides=True,
                    help="predict DICOM series folders with a weights folder (JSON rows + timing)",
                    description=f"One JSON row per series folder. {_SETTINGS}")
    add_weights_argument(p, "weights folder (training run or packaged weights dataset)")
    p.add_argument("series", nargs="+", help="series folders")
    p.add_argument("--heatmaps", help="write each series' heatmap as NIfTI into this folder (for the viewer)")
    _add_predictor_config(p)
    p.add_argument("--compact", action="store_true", help="one JSON line per series")
    return p


def cmd_predict(args: argparse.Namespace) -> int:
    from .predictor import Predictor

    weights = Path(args.weights)
    cfg = predictor_config(args, weights)
    cfg.share_root = None  # local folders: nothing to delete
    if args.heatmaps:
        cfg.heatmap_dir = args.heatmaps
    predictor = Predictor.from_weights(weights, cfg)
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


# -- gateway ------------------------------------------------------------------------------------------------------

def add_gateway_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "gateway", cmd_gateway, help="run a predictor through the local competition gateway")
    p.add_argument("--data", required=True, help="DATA folder (uses DATA/test), a test folder, or a test.csv")
    p.add_argument("--predictor", default="constant",
                   help="'constant', 'module.path:callable' or 'file.py:callable' (see docs/validation.md)")
    p.add_argument("--out", default="submission.parquet", help="submission path (default ./submission.parquet)")
    p.add_argument("--series-root", help="test series folder (default: series/ beside test.csv)")
    p.add_argument("--share-root", help="share folder (default /kaggle/shared on Kaggle, else a temporary one)")
    p.add_argument("--seed", type=int, help="visiting-order seed (default: random, printed)")
    p.add_argument("--time-limit-s", type=float, default=1800.0, help="per-call limit after the first call")
    p.add_argument("--keep-going", action="store_true", help="collect every problem instead of stopping")
    p.add_argument("--train-csv", help="train.csv for the constant predictor's prevalences (default DATA/train.csv)")
    p.add_argument("--solution", help="solution to score against (default solution.csv beside test.csv)")
    return p


def cmd_gateway(args: argparse.Namespace) -> int:
    from .gateway import GatewayError, resolve_test_paths, run_gateway
    from .predictors import load_predictor

    test_csv, series_root = resolve_test_paths(args.data, args.series_root)
    train_csv = args.train_csv
    if train_csv is None and args.predictor == "constant":
        for cand in (Path(args.data) / "train.csv", test_csv.parent.parent / "train.csv"):
            if cand.is_file():
                train_csv = cand
                break
    predict = load_predictor(args.predictor, train_csv)
    print(f"gateway: predictor {args.predictor!r}" + (f" (prevalences from {train_csv})" if train_csv else "")
          + f", test set {test_csv}")
    try:
        result = run_gateway(predict, test_csv, series_root=series_root, share_root=args.share_root,
                             seed=args.seed, out_path=args.out, time_limit_s=args.time_limit_s,
                             keep_going=args.keep_going)
    except GatewayError as e:
        if e.result is not None:
            print(e.result.summary())
        raise CommandError(f"gateway stopped: {e} (rerun with --keep-going to collect every problem)") from e
    print(result.summary())
    solution = Path(args.solution) if args.solution else test_csv.parent / "solution.csv"
    if solution.is_file() and result.submission.height:
        _score_submission(result, solution, Path(args.out))
    return 0 if result.ok else 1


def _score_submission(result: Any, solution: Path, out: Path) -> None:
    """Score the gateway's submission against ``solution`` (only the series it holds when the run had problems)."""
    import polars as pl

    from ..constants import ID_COL
    from ..evaluate.scoring import print_scored, score_tables
    from ..evaluate.tables import read_table

    print(f"\nscoring {result.out_path or 'the submission'} against {solution}")
    labels = read_table(solution)
    if not result.ok:
        labels = labels.filter(pl.col(ID_COL).is_in(result.submission[ID_COL].to_list()))
    report, paths = score_tables(result.submission, labels, out.with_name(out.stem + "_report"), n_boot=200,
                                 pred_source="submission", labels_source=str(solution), thresholds=False)
    print_scored(report, paths)
    if report["partial"]:
        print(f"NOTE: the test set is too small for the strict leaderboard score: "
              f"{len(report['single_class_columns'])} column(s) hold a single class (listed above), so the "
              "number above is a PARTIAL score.")
