"""``rsna-aneurysm`` command line: one entry point, one subcommand per pipeline step.

Each step's module defines ``register(subparsers)``, which adds its parser and sets ``func``; this file only lists
them, so adding a command is one line here and no edits elsewhere.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules with a ``register(subparsers)`` function. Imported lazily so ``--help`` and light commands stay quick
# and a missing optional dependency breaks only the command that needs it.
COMMAND_MODULES: tuple[str, ...] = (
    "rsna_aneurysm.data.cli",
    "rsna_aneurysm.data.cache_cli",
    "rsna_aneurysm.preprocess.cli",
    "rsna_aneurysm.evaluate.cli",
    "rsna_aneurysm.train.cli",
    "rsna_aneurysm.infer.cli",
    "rsna_aneurysm.region.cli",
    "rsna_aneurysm.kaggle.cli",
    "rsna_aneurysm.viewer.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsna-aneurysm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("rsna_aneurysm"):
                continue  # stage not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "accepts_overrides", False):
        args.overrides = extra
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
