"""``rsna-aneurysm train``: fold checkpoints from a config (single process, or under torchrun for several)."""

from __future__ import annotations

import argparse
import json
import logging

from ..config import ConfigError, parse_overrides

log = logging.getLogger(__name__)


def _folds(value: str) -> list[int] | None:
    if value == "all":
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fold takes an integer, a comma list or 'all', got {value!r}") from None


def run_train(args: argparse.Namespace) -> int:
    from .config import load_train_config, shipped_config
    from .loop import train_folds

    overrides = parse_overrides(getattr(args, "overrides", []) or [])
    for flag, key in (("data", "data.preprocessed"), ("cache", "data.cache_dir"), ("out", "out_dir"),
                      ("run", "run_name"), ("folds_table", "data.folds")):
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    path = args.config
    if path and not path.endswith(".json") and "/" not in path:
        path = str(shipped_config(path))
    cfg = load_train_config(path, overrides)
    results = train_folds(cfg, args.fold, resume=not args.no_resume)
    for r in results:
        best = r["best"]
        log.info("fold %d: best epoch %d: score %.4f, AUC %.4f, acc %.3f, sens %.3f, spec %.3f, F2 %.3f (%s)",
                 r["fold"], r["best_epoch"], best.get("score", float("nan")), best.get("auc", float("nan")),
                 best.get("acc", float("nan")), best.get("sens", float("nan")), best.get("spec", float("nan")),
                 best.get("f2", float("nan")), r["dir"])
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0


def _main(args: argparse.Namespace) -> int:
    try:
        return run_train(args)
    except ConfigError as e:
        log.error("%s", e)
        return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train patch models on the folds (torchrun --nproc_per_node N -m rsna_aneurysm.cli train ...)",
        description="Train a patch model per fold. Extra --key value pairs override config keys (e.g. --epochs 3 "
                    "--optim.lr 3e-4). Under torchrun each process trains on its share of every batch (DDP).")
    p.add_argument("--config", required=True,
                   help="training config JSON, or the name of a shipped one (e.g. unet3d_cpu_demo)")
    p.add_argument("--fold", type=_folds, default=None, help="fold number, comma list, or 'all' (default: all)")
    p.add_argument("--data", help="preprocessed folder (sets data.preprocessed)")
    p.add_argument("--cache", help="patch cache folder (sets data.cache_dir)")
    p.add_argument("--folds-table", dest="folds_table", help="folds table (sets data.folds)")
    p.add_argument("--out", help="weights folder (sets out_dir)")
    p.add_argument("--run", help="run name (sets run_name)")
    p.add_argument("--no-resume", action="store_true", help="start over even when fold_<k>/last.pt exists")
    p.add_argument("--json", action="store_true", help="print the per-fold summaries as JSON")
    p.set_defaults(func=_main, accepts_overrides=True)
