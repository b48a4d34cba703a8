"""``rsna-aneurysm region targets|train``: stage one of the two-stage pipeline.

``targets`` writes the region targets and the location atlas of a preprocessed folder; ``train`` trains the region
finder into ``<run>/region/`` (the fine model's run folder, so the predictor, ``oof`` and ``package`` find both).
Settings of ``train``: ``--config FILE`` (JSON of ``RegionConfig``) and ``--key value`` overrides, e.g.
``--finder.epochs 60 --box_mm 128,96,96``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_targets(args: argparse.Namespace) -> int:
    from .targets import build_targets

    pre = Path(args.pre)
    if not (pre / "manifest.parquet").is_file():
        print(f"error: {pre}: no manifest.parquet (run `rsna-aneurysm preprocess` first)", file=sys.stderr)
        return 1
    targets, atlas = build_targets(pre, args.data)
    counts = {s: n for s, n in targets.group_by("source").len().rows()}
    print(f"region targets: {targets.height} series {counts}; atlas: {atlas.height} points "
          f"({atlas['location'].n_unique() if atlas.height else 0} locations) -> {pre}")
    return 0 if targets.height else 1


def cmd_train(args: argparse.Namespace) -> int:
    import polars as pl

    from ..config import ConfigError, load_config, parse_overrides
    from .finder import RegionConfig
    from .train_finder import RegionTrainingError, train_region_finder

    try:
        cfg = load_config(RegionConfig, args.config, parse_overrides(getattr(args, "overrides", []) or []))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    folds = pl.read_parquet(args.folds) if args.folds and str(args.folds).endswith(".parquet") else \
        (pl.read_csv(args.folds) if args.folds else None)
    try:
        metrics = train_region_finder(args.pre, args.run, cfg, folds, args.holdout_fold)
    except (RegionTrainingError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    show = {k: v for k, v in metrics.items() if k not in ("history",)}
    for part in ("train", "val"):
        if show.get(part):
            show[part] = {k: v for k, v in show[part].items() if k != "per_series"}
    print(json.dumps(show, indent=2))
    return 0


def cmd_pipelines(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..infer.cli import _predictor_config
    from ..infer.oof import OOFError
    from .compare import compare_pipelines

    weights = Path(args.weights)
    try:
        cfg = _predictor_config(args, weights)
        test = Path(args.test) if args.test else None
        if test is not None and (test / "test").is_dir():
            test = test / "test"  # a competition folder: its test split
        report = compare_pipelines(weights, args.out or weights / "pipelines", args.data, args.folds, cfg,
                                   args.whole_weights, test)
    except (OOFError, ConfigError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from .compare import format_report

    print(format_report(report), end="")
    print(f"wrote {Path(args.out or weights / 'pipelines') / 'report.md'} and report.json")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    from ..config import ConfigError
    from ..infer.cli import _predictor_config
    from ..infer.oof import OOFError
    from .mine import mine_negatives

    weights = Path(args.weights)
    try:
        cfg = _predictor_config(args, weights)
        mined = mine_negatives(weights, args.data, args.fold, args.top_k, args.min_heat, args.safety_mm,
                               cfg=cfg, out=args.out)
    except (OOFError, ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n_series = mined["SeriesInstanceUID"].n_unique() if mined.height else 0
    print(f"mined {mined.height} false-positive positions in {n_series} series"
          + (f" (heat median {mined['heat'].median():.3f})" if mined.height else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..infer.cli import _folds

    m = sub.add_parser("mine", help="hard-negative mining: a model's false positives on its training series",
                       description="Writes the table cache.mined_negatives reads. Predictor settings: --config "
                                   "FILE and --key value overrides.")
    m.add_argument("--weights", required=True, help="run folder, weights/<run>")
    m.add_argument("--fold", type=int, default=0, help="the fold whose model mines its training series")
    m.add_argument("--data", help="preprocessed folder (default: the run config's data.preprocessed)")
    m.add_argument("--top-k", type=int, default=8, help="heatmap peaks looked at per series")
    m.add_argument("--min-heat", type=float, default=0.2, help="weaker peaks are left out")
    m.add_argument("--safety-mm", type=float, default=12.0, help="peaks nearer an aneurysm are left out")
    m.add_argument("--out", help="output table (default <preprocessed>/mined_negatives.parquet)")
    m.add_argument("--config", help="JSON file of predictor settings (default <weights>/predictor.json if any)")
    m.set_defaults(func=cmd_mine, accepts_overrides=True)

    q = sub.add_parser("pipelines", help="whole-scan vs two-stage pipeline, side by side on the same OOF series",
                       description="Runs oof with both pipelines on the run's validation folds and writes one "
                                   "report. Predictor settings: --config FILE and --key value overrides.")
    q.add_argument("--weights", required=True, help="two-stage run folder (fine model + region/)")
    q.add_argument("--whole-weights", help="a separately trained whole-scan run (default: the same fine model)")
    q.add_argument("--data", help="preprocessed folder (default: the run config's data.preprocessed)")
    q.add_argument("--folds", type=_folds, help="comma list of folds (default: every fold with a checkpoint)")
    q.add_argument("--test", help="labelled test folder (test.csv, series/, solution.csv) or a synthetic DATA folder "
                                  "to score both pipelines on as well")
    q.add_argument("--out", help="report folder (default <weights>/pipelines)")
    q.add_argument("--config", help="JSON file of predictor settings (default <weights>/predictor.json if any)")
    q.set_defaults(func=cmd_pipelines, accepts_overrides=True)

    p = sub.add_parser("region", help="two-stage pipeline, stage one: region targets and the region finder")
    rsub = p.add_subparsers(dest="region_command", metavar="ACTION")
    t = rsub.add_parser("targets", help="region targets + location atlas of a preprocessed folder")
    t.add_argument("--pre", required=True, help="preprocessed folder")
    t.add_argument("--data", help="competition folder (read for synth_truth.json on synthetic data)")
    t.set_defaults(func=cmd_targets)
    r = rsub.add_parser("train", help="train the region finder into <run>/region/",
                        description="Settings: --config FILE (RegionConfig JSON) and --key value overrides.")
    r.add_argument("--pre", required=True, help="preprocessed folder with region targets")
    r.add_argument("--run", required=True, help="run folder of the fine model, weights/<run>")
    r.add_argument("--folds", help="folds table (parquet or csv: SeriesInstanceUID, fold)")
    r.add_argument("--holdout-fold", type=int, default=-1,
                   help="leave this fold out of training and report the finder on it (default: train on all)")
    r.add_argument("--config", help="JSON file of RegionConfig settings")
    r.set_defaults(func=cmd_train, accepts_overrides=True)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
