"""What every ``rsna-aneurysm`` subcommand shares: the parser class, the one error path, the common flags.

Base layer: imports only the standard library and ``rsna_aneurysm.config``, so any stage's ``cli.py`` may use it.
The convention (also in the docstring of ``rsna_aneurysm.cli``):

- a command ``X`` is ``add_X_parser(sub) -> parser`` (built with :func:`add_command`) and ``cmd_X(args) -> int``
  in its stage's ``cli.py``; handlers raise, never print, their errors;
- :func:`run_command` turns an expected error into ONE stderr line ``rsna-aneurysm X: error: <message>`` and an exit
  status: :data:`EXIT_USAGE` (2) when the command line must change, :data:`EXIT_FAILURE` (1) when the command ran
  and failed; a bug keeps its traceback;
- ``--folds`` is fold numbers (:func:`add_folds_argument`), ``--folds-table`` a folds table path, ``--weights`` a
  weights folder (``weights/<run>`` or a packaged weights dataset), ``--config`` a JSON file or the name of a
  shipped config (:func:`resolve_config`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from .config import ConfigError, parse_overrides

PROG = "rsna-aneurysm"
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Set to 1 (or pass ``rsna-aneurysm --debug``) to see the traceback behind an expected error.
DEBUG_ENV = "RSNA_ANEURYSM_DEBUG"
# Shipped configs: ``--config NAME`` means ``CONFIG_DIR / NAME.json``.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

Handler = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A command ran and failed for a reason its message explains (exit 1)."""

    exit_code = EXIT_FAILURE


class UsageError(CommandError):
    """The command line must change: a bad value or combination of flags, a refusal a flag would lift (exit 2)."""

    exit_code = EXIT_USAGE


class KitArgumentParser(argparse.ArgumentParser):
    """``argparse`` with the kit's error line (one line, no usage dump) and no abbreviated flags.

    Abbreviations are off because commands that take ``--key value`` config overrides would otherwise match a
    mistyped override to a flag it happens to prefix.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, error_line(self.prog, f"{message} (see {self.prog} --help)") + "\n")


def error_line(prog: str, message: str) -> str:
    """``<prog>: error: <message>`` on one line (a multi-line message is joined with '; ')."""
    parts = [line.strip() for line in str(message).splitlines() if line.strip()]
    return f"{prog}: error: {'; '.join(parts) or 'failed'}"


def add_command(sub: argparse._SubParsersAction, name: str, handler: Handler, help: str, description: str | None = None,
                overrides: bool = False) -> argparse.ArgumentParser:
    """Add subcommand ``name`` run by ``handler``; ``overrides``: extra ``--key value`` pairs reach it as
    ``args.overrides`` (config overrides) instead of being refused."""
    p = sub.add_parser(name, help=help, description=description or help)
    p.set_defaults(func=handler, accepts_overrides=overrides, cmd_prog=p.prog)
    return p


# -- shared flags -------------------------------------------------------------------------------------------------

_FOLD_SPLIT = re.compile(r"[,\s]+")


def parse_folds(value: str) -> list[int] | None:
    """``"0,1,2"`` or ``"0 1 2"`` -> ``[0, 1, 2]`` (sorted, unique); ``"all"`` -> None (every fold)."""
    if value.strip().lower() == "all":
        return None
    folds: set[int] = set()
    for tok in _FOLD_SPLIT.split(value.strip()):
        if not tok:
            continue
        if not tok.isdigit():
            hint = " (a folds table is --folds-table)" if "/" in tok or tok.endswith((".parquet", ".csv")) else ""
            raise argparse.ArgumentTypeError(f"--folds takes fold numbers such as 0,1,2 or 'all', got {value!r}{hint}")
        folds.add(int(tok))
    if not folds:
        raise argparse.ArgumentTypeError(f"--folds takes fold numbers such as 0,1,2 or 'all', got {value!r}")
    return sorted(folds)


class FoldsAction(argparse.Action):
    """``--folds 0,1 2``: every token through :func:`parse_folds`, merged; ``all`` anywhere means every fold."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        merged: set[int] = set()
        for value in values if isinstance(values, list) else [values]:
            try:
                folds = parse_folds(value)
            except argparse.ArgumentTypeError as e:
                raise argparse.ArgumentError(self, str(e)) from None
            if folds is None:
                setattr(namespace, self.dest, None)
                return
            merged.update(folds)
        setattr(namespace, self.dest, sorted(merged))


def add_folds_argument(p: argparse.ArgumentParser, help: str, *aliases: str) -> argparse.Action:
    """``--folds`` (fold numbers, default None = every fold) through the one folds parser."""
    return p.add_argument("--folds", *aliases, dest="folds", nargs="+", action=FoldsAction, default=None,
                          metavar="K", help=f"{help}: fold numbers, '0,1,2' or '0 1 2', or 'all'")


def add_folds_table_argument(p: argparse.ArgumentParser, help: str) -> argparse.Action:
    """``--folds-table PATH``: a folds table (``SeriesInstanceUID, fold``; parquet or csv, from ``folds``)."""
    return p.add_argument("--folds-table", dest="folds_table", metavar="PATH",
                          help=f"{help}: parquet or csv with SeriesInstanceUID, fold (from `{PROG} folds`)")


def add_weights_argument(p: argparse.ArgumentParser, help: str = "weights folder", required: bool = True
                         ) -> argparse.Action:
    """``--weights DIR``: a weights folder, a training run ``weights/<run>`` or a packaged weights dataset."""
    return p.add_argument("--weights", required=required, metavar="DIR", help=f"{help} (weights/<run>)")


def add_config_argument(p: argparse.ArgumentParser, help: str, required: bool = False) -> argparse.Action:
    """``--config NAME_OR_PATH``: a JSON file, or the name of a shipped config (see :func:`resolve_config`)."""
    return p.add_argument("--config", required=required, metavar="NAME_OR_PATH",
                          help=f"{help}: a JSON file, or the name of a shipped config ({', '.join(shipped_configs())})")


def shipped_configs() -> list[str]:
    """Names of the configs shipped in ``rsna_aneurysm/configs``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def resolve_config(value: str | Path | None) -> Path | None:
    """The file ``--config`` names: an existing path as given, else a shipped config ``configs/<value>.json``.

    A value that is neither raises :class:`ConfigError` naming the shipped configs.
    """
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        return path
    name = str(value)
    if "/" not in name and os.sep not in name:
        shipped = CONFIG_DIR / (name if name.endswith(".json") else f"{name}.json")
        if shipped.is_file():
            return shipped
    if path.exists():
        raise ConfigError(f"config {value} is not a file")
    raise ConfigError(f"config {value}: no such file, and no shipped config of that name "
                      f"(shipped: {', '.join(shipped_configs())})")


def overrides(args: argparse.Namespace) -> dict[str, str]:
    """The command's ``--key value`` config overrides as a dict (a malformed one raises ConfigError)."""
    return parse_overrides(list(getattr(args, "overrides", None) or []))


# -- the error path -----------------------------------------------------------------------------------------------

def _is_kit_error(exc: BaseException) -> bool:
    """An exception class the kit itself defines (public, in ``rsna_aneurysm``): raised for an expected failure."""
    return any(c.__module__.startswith("rsna_aneurysm.") and not c.__name__.startswith("_")
               for c in type(exc).__mro__ if issubclass(c, Exception))


def exit_code_for(exc: BaseException) -> int | None:
    """Exit status of an expected error; None for anything else (a bug: it keeps its traceback)."""
    if isinstance(exc, (ConfigError, UsageError)):
        return EXIT_USAGE
    if _is_kit_error(exc) and getattr(type(exc), "exit_code", None) in (EXIT_USAGE, EXIT_FAILURE):
        return type(exc).exit_code  # a kit error class may declare its status (e.g. io.tables.TableError: 2)
    if isinstance(exc, CommandError) or _is_kit_error(exc) or isinstance(exc, OSError):
        return EXIT_FAILURE
    return None


def error_message(exc: BaseException) -> str:
    """The message of ``exc`` (a KeyError's without the quotes ``str`` adds)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def debug_enabled(args: argparse.Namespace | None = None) -> bool:
    """``--debug`` given, or ``RSNA_ANEURYSM_DEBUG`` set to something other than '' or 0."""
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.func`` with the one error path; returns the exit status."""
    prog = getattr(args, "cmd_prog", PROG)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(error_line(prog, "interrupted"), file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        code = exit_code_for(e)
        if code is None:
            raise
        if debug_enabled(args):
            traceback.print_exc()
        print(error_line(prog, error_message(e)), file=sys.stderr)
        return code
