"""``rsna-aneurysm roi train``: the vessel-guided ROI classifier, into a complete vessel-ROI weights folder.

Builds (or resumes) the ROI cache with the segmenter of ``--segmenter`` (a run folder holding
``vessels/segmenter.pt``), trains one classifier per fold, and makes ``--out`` a weights folder the scan pipeline,
``oof``, ``pipelines`` and ``package`` read: ``roi.json``, ``config.json``, ``vessels/segmenter.pt``,
``fold_<k>/best.pt``, and ``region/`` (the region finder, the locator's fallback) copied from ``--region-from``.
Settings: ``--config`` (``roi_cpu``, ``roi_gpu`` or a JSON of ``RoiTrainConfig``) and ``--key value`` overrides,
e.g. ``--pretrained false`` for the ablation without segmentation pretraining.
"""

from __future__ import annotations

import argparse
import json

from ..cli_common import (
    add_command,
    add_config_argument,
    add_folds_argument,
    add_folds_table_argument,
    overrides,
    resolve_config,
)


def add_roi_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("roi", help="vessel-ROI pipeline, stage two: train the ROI classifier",
                       description="The vessel-guided ROI classifier.")
    rsub = p.add_subparsers(dest="roi_command", metavar="ACTION", required=True)
    t = add_command(rsub, "train", cmd_roi_train, overrides=True,
                    help="ROI cache + one classifier per fold into a vessel-ROI weights folder",
                    description="Settings: --config (RoiTrainConfig JSON or a shipped name) and --key value "
                                "overrides.")
    t.add_argument("--pre", required=True, help="preprocessed folder")
    t.add_argument("--segmenter", required=True, help="run folder holding vessels/segmenter.pt")
    t.add_argument("--out", required=True, help="the vessel-ROI weights folder to write")
    t.add_argument("--cache", help="ROI cache folder (default <out>/roi_cache)")
    t.add_argument("--region-from", help="run folder whose region/ (region finder) becomes the fallback")
    t.add_argument("--k", type=int, default=None, help="folds when no --folds-table (default: the config's n_folds)")
    add_folds_table_argument(t, "folds table (default: the kit's fold function on the series labels)")
    add_folds_argument(t, "folds to train (default: all)")
    add_config_argument(t, "RoiTrainConfig settings")
    return p


def cmd_roi_train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from .train import RoiTrainConfig, train_roi_run

    cfg = load_config(RoiTrainConfig, resolve_config(args.config), overrides(args))
    results = train_roi_run(args.pre, args.segmenter, args.out, cfg, cache_dir=args.cache,
                            folds_table=args.folds_table, folds=args.folds, n_folds=args.k,
                            region_from=args.region_from)
    print(json.dumps({f"fold_{k}": {"best_score": v["best_score"], "n_train": v["n_train"], "n_val": v["n_val"]}
                      for k, v in results.items()}, indent=2))
    return 0
