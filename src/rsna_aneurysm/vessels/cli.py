"""``rsna-aneurysm vessels train``: the vessel segmenter of the vessel-ROI pipeline.

Trains on the series of a preprocessed folder that have vessel labels into ``<out>/vessels/`` (``segmenter.pt``,
``last.pt`` to resume, ``metrics.csv``, ``metrics.json`` with the held-out Dice). Settings: ``--config`` (JSON of
``SegmenterConfig``) and ``--key value`` overrides, e.g. ``--epochs 60 --spacing_mm 1.0``.
"""

from __future__ import annotations

import argparse
import json

from ..cli_common import add_command, add_config_argument, overrides, resolve_config


def add_vessels_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("vessels", help="vessel-ROI pipeline, stage one: train the vessel segmenter",
                       description="The vessel segmenter (nnU-Net's residual-encoder U-Net) of the vessel-ROI "
                                   "pipeline.")
    vsub = p.add_subparsers(dest="vessels_command", metavar="ACTION", required=True)
    t = add_command(vsub, "train", cmd_vessels_train, overrides=True,
                    help="train the segmenter on the series with vessel labels into <out>/vessels/",
                    description="Settings: --config (SegmenterConfig JSON) and --key value overrides.")
    t.add_argument("--pre", required=True, help="preprocessed folder (its series with segmentations are used)")
    t.add_argument("--out", required=True, help="run folder; the segmenter goes to <out>/vessels/")
    add_config_argument(t, "SegmenterConfig settings")
    return p


def cmd_vessels_train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from .train import SegmenterConfig, train_segmenter

    cfg = load_config(SegmenterConfig, resolve_config(args.config), overrides(args))
    metrics = train_segmenter(args.pre, args.out, cfg)
    val = metrics.get("val") or {}
    print(json.dumps({"epoch": metrics.get("epoch"), "n_train": metrics.get("n_train"),
                      "n_val": metrics.get("n_val"), "val_class_dice": val.get("class_dice"),
                      "val_vessel_dice": val.get("vessel_dice")}, indent=2))
    return 0
