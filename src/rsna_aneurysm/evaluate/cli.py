"""Commands ``folds``, ``score`` and ``gateway``: the local stand-ins for what the leaderboard does."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import polars as pl

from ..constants import ID_COL, LABEL_COLS
from .metric import MetricError
from .tables import TableError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("folds", help="write a patient-grouped, multilabel-stratified folds table")
    p.add_argument("--data", required=True, help="competition folder holding train.csv (and series/)")
    p.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed (same seed, same folds)")
    p.add_argument("--out", help="folds table, .parquet (default DATA/folds.parquet) or .csv (writes both)")
    p.add_argument("--patient-ids", help="table (csv/parquet) with SeriesInstanceUID, PatientID to group by")
    p.add_argument("--read-patient-ids", action="store_true",
                   help="read PatientID from one DICOM header per series under DATA/series (slow on real data)")
    p.add_argument("--workers", type=int, default=8, help="threads for --read-patient-ids")
    p.set_defaults(func=cmd_folds)

    p = sub.add_parser("score", help="score out-of-fold predictions; write report, plots and F2 thresholds")
    p.add_argument("--pred", required=True, help="predictions (parquet/csv): SeriesInstanceUID + 14 columns")
    p.add_argument("--labels", required=True, help="labels (parquet/csv), e.g. train.csv or solution.csv")
    p.add_argument("--out", help="report folder (default: <pred stem>_report next to --pred)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for intervals (0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--beta", type=float, default=2.0, help="F-beta for the thresholds (default F2)")
    p.add_argument("--thresholds", help="where to write thresholds.json (default: in the report folder)")
    p.add_argument("--strict", action="store_true", help="exit 1 when the strict (leaderboard) score is undefined")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("gateway", help="run a predictor through the local competition gateway")
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
    p.set_defaults(func=cmd_gateway)


def cmd_folds(args: argparse.Namespace) -> int:
    from .folds import PATIENT_COL, empty_cells, fold_positive_counts, format_counts, make_folds, read_patient_ids
    from .tables import read_table, write_table

    data = Path(args.data)
    try:
        labels = read_table(data / "train.csv")
        if args.patient_ids:
            pid = read_table(Path(args.patient_ids)).select(pl.col(ID_COL), pl.col(PATIENT_COL).cast(pl.String))
            labels = labels.drop(PATIENT_COL, strict=False).join(pid, on=ID_COL, how="left")
        elif args.read_patient_ids:
            pid = read_patient_ids(data / "series", labels[ID_COL].to_list(), args.workers)
            labels = labels.drop(PATIENT_COL, strict=False).join(pid, on=ID_COL, how="left")
        folds = make_folds(labels, k=args.k, seed=args.seed)
    except (TableError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    grouped = PATIENT_COL in folds.columns
    n_groups = folds[PATIENT_COL].n_unique() if grouped else folds.height
    print(f"{folds.height} series in {args.k} folds (seed {args.seed}); "
          + (f"grouped by {PATIENT_COL} ({n_groups} patients)" if grouped else "no PatientID: one group per series"))
    counts = fold_positive_counts(labels, folds)
    print(format_counts(counts))
    empty: dict[int, list[str]] = {}
    for fold, col in empty_cells(counts):
        empty.setdefault(fold, []).append(col)
    for fold, cols in empty.items():
        print(f"WARNING: fold {fold} has no positive for {len(cols)} column(s), so its validation AUC is undefined "
              f"for: {', '.join(cols)}", file=sys.stderr)
    out = Path(args.out) if args.out else data / "folds.parquet"
    try:
        write_table(folds, out.with_suffix(".parquet"))
        if out.suffix.lower() == ".csv":
            write_table(folds, out)
    except OSError as e:
        print(f"error: cannot write {out}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out.with_suffix('.parquet')}" + (f" and {out}" if out.suffix.lower() == ".csv" else ""))
    return 0


def score_tables(pred: pl.DataFrame, labels: pl.DataFrame, out_dir: Path, n_boot: int = 1000, seed: int = 0,
                 beta: float = 2.0, thresholds_path: Path | None = None, pred_source: str = "predictions",
                 labels_source: str = "labels", thresholds: bool = True) -> dict:
    """Align, report (printed), write report.json + plots (+ thresholds.json); returns the report.

    The strict leaderboard function is run too: its value, or why it is undefined, is in the report.
    """
    from .metric import SingleClassColumnError, score
    from .report import build_report, format_table, write_report
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
    paths = list(write_report(report, y_true, y_score, out_dir).values())
    if thresholds:
        paths.append(save_thresholds(thr, thresholds_path or out_dir / "thresholds.json"))
    print(format_table(report))
    print(f"\nwrote {', '.join(str(p) for p in paths)}")
    return report


def cmd_score(args: argparse.Namespace) -> int:
    from .tables import read_table

    pred_path = Path(args.pred)
    out_dir = Path(args.out) if args.out else pred_path.with_name(pred_path.stem + "_report")
    try:
        report = score_tables(read_table(pred_path), read_table(args.labels), out_dir, args.bootstrap, args.seed,
                              args.beta, Path(args.thresholds) if args.thresholds else None, str(pred_path),
                              str(args.labels))
    except (TableError, MetricError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if report["partial"]:
        print(f"NOTE: the strict leaderboard score is undefined: column(s) {report['single_class_columns']} hold a "
              "single class; the number above is a partial score.", file=sys.stderr)
        return 1 if args.strict else 0
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from ..infer.gateway import GatewayError, resolve_test_paths, run_gateway
    from ..infer.predictors import PredictorSpecError, load_predictor
    from .tables import read_table

    try:
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
        result = run_gateway(predict, test_csv, series_root=series_root, share_root=args.share_root,
                             seed=args.seed, out_path=args.out, time_limit_s=args.time_limit_s,
                             keep_going=args.keep_going)
    except GatewayError as e:
        if e.result is not None:
            print(e.result.summary())
        print(f"error: gateway stopped: {e}\n(rerun with --keep-going to collect every problem)", file=sys.stderr)
        return 1
    except PredictorSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    solution = Path(args.solution) if args.solution else test_csv.parent / "solution.csv"
    if solution.is_file() and result.submission.height:
        print(f"\nscoring {result.out_path or 'the submission'} against {solution}")
        out_dir = Path(args.out).with_name(Path(args.out).stem + "_report")
        try:
            labels = read_table(solution)
            if not result.ok:
                labels = labels.filter(pl.col(ID_COL).is_in(result.submission[ID_COL].to_list()))
            report = score_tables(result.submission, labels, out_dir, n_boot=200, pred_source="submission",
                                  labels_source=str(solution), thresholds=False)
        except (TableError, MetricError, ValueError) as e:
            print(f"error: cannot score: {e}", file=sys.stderr)
            return 1
        if report["partial"]:
            print(f"NOTE: the test set is too small for the strict leaderboard score: "
                  f"{len(report['single_class_columns'])} column(s) hold a single class (listed above), so the "
                  "number above is a PARTIAL score.")
    return 0 if result.ok else 1
