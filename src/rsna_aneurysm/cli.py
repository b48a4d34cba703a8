"""``rsna-aneurysm`` command line: one entry point, one subcommand per pipeline step, listed in pipeline order.

Convention (the shared pieces are in ``rsna_aneurysm.cli_common``):

- Command ``X`` lives in its stage's ``cli.py`` as ``add_X_parser(sub)`` (registers it through ``add_command``) and
  ``cmd_X(args) -> int``; :data:`COMMANDS` below lists the ``add_X_parser`` functions in pipeline order, which is
  the order of ``--help``. A command module imports only the standard library and ``cli_common`` at the top (so
  ``--help`` stays quick and a missing optional dependency breaks only its command) and never imports another
  command module or a higher layer.
- Errors: one path. A bad argument, a bad ``--key value`` config override, a missing input file or any of the
  kit's own exceptions prints ONE line ``rsna-aneurysm X: error: <message>`` on stderr, never a traceback.
  Exit status 2: the command line must change (argparse errors, unknown config key or wrong type, an unknown
  ``--config`` name, a refusal a flag lifts); 1: the command ran and failed (missing or malformed inputs, any kit
  error, an OSError); 130: interrupted. ``--debug`` (or ``RSNA_ANEURYSM_DEBUG=1``) also prints the traceback. An
  unexpected exception (a bug) keeps its traceback.
- Flags with one meaning everywhere: ``--weights DIR`` a weights folder (training run ``weights/<run>`` or a
  packaged weights dataset); ``--folds K...`` fold numbers (``0,1,2``, ``0 1 2`` or ``all``); ``--folds-table
  PATH`` a folds table; ``--config NAME_OR_PATH`` a JSON file or a shipped config's name (``unet3d_region_demo``
  is ``rsna_aneurysm/configs/unet3d_region_demo.json``). Commands marked so take extra ``--key value`` pairs as
  config overrides (``--optim.lr 3e-4``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .cli_common import EXIT_USAGE, PROG, KitArgumentParser, error_line, run_command

# ``module:add_<cmd>_parser`` in pipeline order (the order of ``--help``).
COMMANDS: tuple[str, ...] = (
    "rsna_aneurysm.data.cli:add_synth_parser",
    "rsna_aneurysm.preprocess.cli:add_inspect_parser",
    "rsna_aneurysm.preprocess.cli:add_preprocess_parser",
    "rsna_aneurysm.preprocess.cli:add_nnunet_export_parser",
    "rsna_aneurysm.evaluate.cli:add_folds_parser",
    "rsna_aneurysm.region.cli:add_region_parser",
    "rsna_aneurysm.vessels.cli:add_vessels_parser",
    "rsna_aneurysm.data.cache_cli:add_cache_parser",
    "rsna_aneurysm.train.cli:add_train_parser",
    "rsna_aneurysm.roi.cli:add_roi_parser",
    "rsna_aneurysm.infer.cli:add_oof_parser",
    "rsna_aneurysm.evaluate.cli:add_score_parser",
    "rsna_aneurysm.infer.cli:add_pipelines_parser",
    "rsna_aneurysm.infer.cli:add_mine_parser",
    "rsna_aneurysm.infer.cli:add_predict_parser",
    "rsna_aneurysm.kaggle.cli:add_package_parser",
    "rsna_aneurysm.kaggle.cli:add_push_parser",
    "rsna_aneurysm.infer.cli:add_gateway_parser",
    "rsna_aneurysm.viewer.cli:add_view_parser",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command of :data:`COMMANDS` registered, in that order."""
    parser = KitArgumentParser(prog=PROG, description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback behind an error too (or set RSNA_ANEURYSM_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for spec in COMMANDS:
        module, func = spec.split(":")
        getattr(importlib.import_module(module), func)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command; returns the exit status."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as e:  # --help, or a usage error already printed as one line
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    if getattr(args, "accepts_overrides", False):
        args.overrides = extra
    elif extra:
        print(error_line(args.cmd_prog, f"unrecognized arguments: {' '.join(extra)} (see {args.cmd_prog} --help)"),
              file=sys.stderr)
        return EXIT_USAGE
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
