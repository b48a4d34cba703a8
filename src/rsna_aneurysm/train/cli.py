"""``rsna-aneurysm train``: fold checkpoints from a config (single process, or under torchrun for several)."""

from __future__ import annotations

import argparse
import json
import logging

from ..cli_common import add_command, add_config_argument, add_folds_argument, add_folds_table_argument, overrides

log = logging.getLogger(__name__)

# Flags that set a config key, so the common ones need no dotted override.
_FLAG_KEYS = (("data", "data.preprocessed"), ("cache", "data.cache_dir"), ("out", "out_dir"),
              ("folds_table", "data.folds"))


def add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "train", cmd_train, overrides=True,
                    help="train patch models on the folds (torchrun --nproc_per_node N -m rsna_aneurysm.cli train ...)",
                    description="Train a patch model per fold into <out>/<run_name>/. Extra --key value pairs "
                                "override config keys (e.g. --epochs 3 --optim.lr 3e-4 --run_name NAME). Under "
                                "torchrun each process trains on its share of every batch (DDP).")
    add_config_argument(p, "training config", required=True)
    add_folds_argument(p, "folds to train (default: all)", "--fold")
    p.add_argument("--data", help="preprocessed folder (sets data.preprocessed)")
    p.add_argument("--cache", help="patch cache folder (sets data.cache_dir)")
    add_folds_table_argument(p, "folds table (sets data.folds)")
    p.add_argument("--out", help="folder the run folder goes in (sets out_dir; default weights)")
    p.add_argument("--no-resume", action="store_true", help="start over even when fold_<k>/last.pt exists")
    p.add_argument("--json", action="store_true", help="print the per-fold summaries as JSON")
    return p


def cmd_train(args: argparse.Namespace) -> int:
    from ..cli_common import resolve_config
    from .config import load_train_config
    from .loop import train_folds

    settings = overrides(args)
    for flag, key in _FLAG_KEYS:
        if getattr(args, flag, None) is not None:
            settings[key] = getattr(args, flag)
    cfg = load_train_config(resolve_config(args.config), settings)
    results = train_folds(cfg, args.folds, resume=not args.no_resume)
    for r in results:
        best = r["best"]
        log.info("fold %d: best epoch %d: score %.4f, AUC %.4f, acc %.3f, sens %.3f, spec %.3f, F2 %.3f (%s)",
                 r["fold"], r["best_epoch"], best.get("score", float("nan")), best.get("auc", float("nan")),
                 best.get("acc", float("nan")), best.get("sens", float("nan")), best.get("spec", float("nan")),
                 best.get("f2", float("nan")), r["dir"])
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0
