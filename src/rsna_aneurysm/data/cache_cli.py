"""``rsna-aneurysm cache``: build the patch cache of a preprocessed folder.

The settings are a ``CacheConfig`` (a bare cache JSON, or a training config's ``cache`` section, then ``--key value``
overrides), which checks itself: ``cache`` refuses exactly what ``train`` refuses, with the same message.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..cli_common import PROG, add_command, add_config_argument, add_folds_table_argument, overrides

if TYPE_CHECKING:
    from .cache_config import CacheConfig

log = logging.getLogger(__name__)


def load_cache_config(path: str | Path | None, overrides: dict[str, str]) -> CacheConfig:
    """CacheConfig from a cache JSON or a training config (its ``cache`` section; a shipped config's name works
    too), then overrides (``cache.`` prefix optional). ConfigError naming ``cache.<key>`` for a wrong value."""
    from ..cli_common import resolve_config
    from ..config import ConfigError, apply_overrides, from_dict, read_json_object
    from .cache_config import CacheConfig

    data: dict = {}
    p = resolve_config(path)
    if p is not None:
        data = read_json_object(p)
        if "cache" in data:
            data = data["cache"]
            if not isinstance(data, dict):
                raise ConfigError(f"config key 'cache' in {p}: expected an object")
    cfg = from_dict(CacheConfig, data, prefix="cache.")
    return apply_overrides(cfg, {k.removeprefix("cache."): v for k, v in overrides.items()}, prefix="cache.")


def cmd_cache(args: argparse.Namespace) -> int:
    """Build the cache; a bad setting raises ConfigError before any work (``cli_common.run_command`` reports it)."""
    from .cache import build_cache

    cfg = load_cache_config(args.config, overrides(args))
    result = build_cache(args.data, args.out, cfg, workers=args.workers, folds=args.folds_table,
                         n_folds=args.n_folds, fold_seed=args.fold_seed, verify=not args.no_verify)
    n_pos = int(result.index["Aneurysm Present"].sum()) if len(result.index) else 0
    print(f"cache {args.out}: {len(result.index)} patches ({n_pos} positive) from "
          f"{result.built + result.reused} series ({result.built} built, {result.reused} reused, "
          f"{result.rebuilt_corrupt} damaged entries rebuilt), {len(result.failed)} failed, {len(result.skipped)} "
          f"skipped, {result.seconds:.1f} s")
    return 0 if result.built + result.reused > 0 else 1


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help=f"preprocessed folder (from `{PROG} preprocess`)")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--workers", type=int, default=2, help="processes (each holds one volume at a time)")
    p.add_argument("--n-folds", type=int, default=5, help="folds of the deterministic split (without a table)")
    p.add_argument("--fold-seed", type=int, default=42, help="seed of the deterministic split")
    p.add_argument("--no-verify", action="store_true", help="check entries by size only, not by CRC-32")


_HELP = "build the training patch cache from a preprocessed folder"
_DESCRIPTION = ("Cut positive/negative patches once per series (parallel, resumable, atomic). Extra --key value "
                "pairs override cache settings (--cache.jitter_mm 8 or --jitter_mm 8).")


def add_cache_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``cache`` (the ``rsna_aneurysm.cli`` convention: errors raise, ``run_command`` prints one line)."""
    p = add_command(sub, "cache", cmd_cache, help=_HELP, description=_DESCRIPTION, overrides=True)
    _add_arguments(p)
    add_config_argument(p, "cache settings: a cache JSON or a training config (its 'cache' section)")
    add_folds_table_argument(p, "folds table for the index's fold column (default: deterministic split)")
    return p
