"""``rsna-aneurysm cache``: build the patch cache of a preprocessed folder."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import ConfigError, from_dict, parse_overrides, read_json_object

log = logging.getLogger(__name__)


def load_cache_config(path: str | None, overrides: dict[str, str]):
    """CacheConfig from a bare cache JSON or a training config (its ``cache`` section), then overrides."""
    from ..config import apply_overrides
    from .cache import CacheConfig

    data: dict = {}
    if path:
        p = Path(path)
        if not p.exists() and "/" not in path:
            from ..train.config import shipped_config

            p = shipped_config(path)
        data = read_json_object(p)
        if "cache" in data:
            data = data["cache"]
            if not isinstance(data, dict):
                raise ConfigError(f"config key 'cache' in {p}: expected an object")
    cfg = from_dict(CacheConfig, data, prefix="cache.")
    return apply_overrides(cfg, {k.removeprefix("cache."): v for k, v in overrides.items()})


def run_cache(args: argparse.Namespace) -> int:
    from .cache import build_cache

    try:
        cfg = load_cache_config(args.config, parse_overrides(getattr(args, "overrides", []) or []))
    except ConfigError as e:
        log.error("%s", e)
        return 2
    result = build_cache(args.data, args.out, cfg, workers=args.workers, folds=args.folds, n_folds=args.n_folds,
                         fold_seed=args.fold_seed, verify=not args.no_verify)
    n_pos = int(result.index["Aneurysm Present"].sum()) if len(result.index) else 0
    print(f"cache {args.out}: {len(result.index)} patches ({n_pos} positive) from "
          f"{result.built + result.reused} series ({result.built} built, {result.reused} reused, "
          f"{result.rebuilt_corrupt} damaged entries rebuilt), {len(result.failed)} failed, {len(result.skipped)} "
          f"skipped, {result.seconds:.1f} s")
    return 0 if result.built + result.reused > 0 else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cache", help="build the training patch cache from a preprocessed folder",
                              description="Cut positive/negative patches once per series (parallel, resumable, "
                                          "atomic). Extra --key value pairs override cache settings.")
    p.add_argument("--data", required=True, help="preprocessed folder (from `rsna-aneurysm preprocess`)")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--config", help="cache JSON, or a training config (its 'cache' section), or a shipped name")
    p.add_argument("--workers", type=int, default=2, help="processes (each holds one volume at a time)")
    p.add_argument("--folds", help="folds table for the index's fold column (default: deterministic split)")
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--fold-seed", type=int, default=42)
    p.add_argument("--no-verify", action="store_true", help="check entries by size only, not by CRC-32")
    p.set_defaults(func=run_cache, accepts_overrides=True)
