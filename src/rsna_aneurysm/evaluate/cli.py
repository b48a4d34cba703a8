"""``rsna-aneurysm folds`` (the folds table) and ``rsna-aneurysm score`` (the leaderboard metric, locally)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_common import CommandError, add_command


def add_folds_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "folds", cmd_folds, help="write a patient-grouped, multilabel-stratified folds table")
    p.add_argument("--data", required=True, help="competition folder holding train.csv (and series/)")
    p.add_argument("--k", type=int, default=5, help="number of folds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed (same seed, same folds)")
    p.add_argument("--out", help="folds table, .parquet (default DATA/folds.parquet) or .csv (writes both)")
    p.add_argument("--patient-ids", help="table (csv/parquet) with SeriesInstanceUID, PatientID to group by")
    p.add_argument("--read-patient-ids", action="store_true",
                   help="read PatientID from one DICOM header per series under DATA/series (slow on real data)")
    p.add_argument("--workers", type=int, default=8, help="threads for --read-patient-ids")
    return p


def cmd_folds(args: argparse.Namespace) -> int:
    import polars as pl

    from ..constants import ID_COL
    from ..data.folds import PATIENT_COL, empty_cells, fold_positive_counts, format_counts, make_folds, read_patient_ids
    from ..io.tables import read_series_table
    from ..layout import DataDir
    from .tables import read_table, write_table

    data = Path(args.data)
    labels = read_series_table(DataDir(data).train_csv)  # validated: unique safe UIDs, labels 0/1 (TableError)
    if args.patient_ids:
        pid = read_table(Path(args.patient_ids)).select(pl.col(ID_COL), pl.col(PATIENT_COL).cast(pl.String))
        labels = labels.drop(PATIENT_COL, strict=False).join(pid, on=ID_COL, how="left")
    elif args.read_patient_ids:
        pid = read_patient_ids(data / "series", labels[ID_COL].to_list(), args.workers)
        labels = labels.drop(PATIENT_COL, strict=False).join(pid, on=ID_COL, how="left")
    folds = make_folds(labels, k=args.k, seed=args.seed)
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
        raise CommandError(f"cannot write {out}: {e}") from e
    print(f"wrote {out.with_suffix('.parquet')}" + (f" and {out}" if out.suffix.lower() == ".csv" else ""))
    return 0


def add_score_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "score", cmd_score,
                    help="score out-of-fold predictions; write report, plots and F2 thresholds")
    p.add_argument("--pred", required=True, help="predictions (parquet/csv): SeriesInstanceUID + 14 columns")
    p.add_argument("--labels", required=True, help="labels (parquet/csv), e.g. train.csv or solution.csv")
    p.add_argument("--out", help="report folder (default: <pred stem>_report next to --pred)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for intervals (0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--beta", type=float, default=2.0, help="F-beta for the thresholds (default F2)")
    p.add_argument("--thresholds", help="where to write thresholds.json (default: in the report folder)")
    p.add_argument("--strict", action="store_true", help="exit 1 when the strict (leaderboard) score is undefined")
    return p


def cmd_score(args: argparse.Namespace) -> int:
    from .scoring import print_scored, score_tables
    from .tables import read_table

    pred_path = Path(args.pred)
    out_dir = Path(args.out) if args.out else pred_path.with_name(pred_path.stem + "_report")
    report, paths = score_tables(read_table(pred_path), read_table(args.labels), out_dir, args.bootstrap, args.seed,
                                 args.beta, Path(args.thresholds) if args.thresholds else None, str(pred_path),
                                 str(args.labels))
    print_scored(report, paths)
    if report["partial"]:
        print(f"NOTE: the strict leaderboard score is undefined: column(s) {report['single_class_columns']} hold a "
              "single class; the number above is a partial score.", file=sys.stderr)
        return 1 if args.strict else 0
    return 0
