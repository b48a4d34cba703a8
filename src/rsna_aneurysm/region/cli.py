"""``rsna-aneurysm region targets|train``: stage one of the two-stage pipeline.

``targets`` (after ``preprocess``) writes the region targets and the location atlas of a preprocessed folder;
``train`` (after ``train``) trains the region finder into ``<weights>/region/`` (the fine model's run folder, so the
predictor, ``oof`` and ``package`` find both). Settings of ``train``: ``--config`` (JSON of ``RegionConfig``) and
``--key value`` overrides, e.g. ``--finder.epochs 60 --box_mm 128,96,96``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..cli_common import (
    PROG,
    UsageError,
    add_command,
    add_config_argument,
    add_folds_table_argument,
    add_weights_argument,
    overrides,
    resolve_config,
)


def add_region_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("region", help="two-stage pipeline, stage one: region targets (after preprocess) and the "
                                      "region finder (after train)",
                       description="Stage one of the two-stage pipeline: `region targets`, then `region train`.")
    rsub = p.add_subparsers(dest="region_command", metavar="ACTION", required=True)
    t = add_command(rsub, "targets", cmd_region_targets,
                    help="region targets + location atlas of a preprocessed folder")
    t.add_argument("--pre", required=True, help="preprocessed folder")
    t.add_argument("--data", help="competition folder (read for synth_truth.json on synthetic data)")
    r = add_command(rsub, "train", cmd_region_train, overrides=True,
                    help="train the region finder into <weights>/region/",
                    description="Settings: --config (RegionConfig JSON) and --key value overrides.")
    r.add_argument("--pre", required=True, help="preprocessed folder with region targets")
    add_weights_argument(r, "run folder of the fine model")
    add_folds_table_argument(r, "folds table for --holdout-fold and --per-fold")
    r.add_argument("--holdout-fold", type=int, default=-1,
                   help="leave this fold out of training and report the finder on it (default: train on all)")
    r.add_argument("--per-fold", action="store_true",
                   help="also train one finder per fold of --folds-table into <weights>/region/fold_<k>/ (for an "
                        "out-of-fold estimate of stage one)")
    add_config_argument(r, "RegionConfig settings")
    return p


def cmd_region_targets(args: argparse.Namespace) -> int:
    from ..layout import PreDir
    from .targets import build_targets

    pre = Path(args.pre)
    if not PreDir(pre).exists():
        raise FileNotFoundError(f"{pre}: no manifest.parquet (run `{PROG} preprocess` first)")
    targets, atlas = build_targets(pre, args.data)
    counts = {s: n for s, n in targets.group_by("source").len().rows()}
    print(f"region targets: {targets.height} series {counts}; atlas: {atlas.height} points "
          f"({atlas['location'].n_unique() if atlas.height else 0} locations) -> {pre}")
    return 0 if targets.height else 1


def _shown(metrics: dict[str, Any]) -> dict[str, Any]:
    """The finder's metrics without the long parts (history, per-series rows)."""
    show = {k: v for k, v in metrics.items() if k != "history"}
    for part in ("train", "val"):
        if show.get(part):
            show[part] = {k: v for k, v in show[part].items() if k != "per_series"}
    return show


def cmd_region_train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from .finder import RegionConfig
    from .train_finder import train_region_finder, train_region_finders_per_fold

    cfg = load_config(RegionConfig, resolve_config(args.config), overrides(args))
    if args.per_fold and not args.folds_table:
        raise UsageError("--per-fold needs --folds-table")
    folds = None
    if args.folds_table:
        from ..data.folds import read_folds

        folds = read_folds(args.folds_table)
    metrics = train_region_finder(args.pre, args.weights, cfg, folds, args.holdout_fold)
    print(json.dumps(_shown(metrics), indent=2))
    if args.per_fold:
        per_fold = train_region_finders_per_fold(args.pre, args.weights, folds, cfg)
        print(json.dumps({f"fold_{k}": _shown(m).get("val") for k, m in per_fold.items()}, indent=2))
    return 0
