"""One convention for every ``rsna-aneurysm`` command: one error line, shared flags, help order, layering.

The command list comes from the parser itself, so a new command is covered without editing this file (a new
command that takes config overrides must add a wrongly typed override to ``BAD_VALUES``).
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rsna_aneurysm import cli_common
from rsna_aneurysm.cli import COMMANDS, build_parser, main
from rsna_aneurysm.cli_common import (
    CONFIG_DIR,
    EXIT_FAILURE,
    EXIT_USAGE,
    FoldsAction,
    exit_code_for,
    parse_folds,
    resolve_config,
    run_command,
)
from rsna_aneurysm.config import ConfigError

SRC = Path(cli_common.__file__).resolve().parent

HELP_ORDER = ["synth", "inspect", "preprocess", "nnunet-export", "folds", "region", "vessels", "cache", "train", "roi",
              "oof", "score",
              "pipelines", "mine", "predict", "package", "push", "gateway", "view"]

# A config key of the right name with a value of the wrong type, per command that takes overrides.
BAD_VALUES = {
    "preprocess": ["--n4", "maybe"],
    "cache": ["--positives_per_aneurysm", "many"],
    "train": ["--epochs", "many"],
    "region train": ["--finder.epochs", "many"],
    "vessels train": ["--epochs", "many"],
    "roi train": ["--epochs", "many"],
    "oof": ["--tta_flip", "maybe"],
    "pipelines": ["--tta_flip", "maybe"],
    "mine": ["--tta_flip", "maybe"],
    "predict": ["--tta_flip", "maybe"],
    "package": ["--is_private", "maybe"],
}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every runnable command, nested ones (``region train``) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub.get_default("func") is not None:
                    yield (*path, name), sub
                yield from _leaves(sub, (*path, name))


LEAVES = {" ".join(words): sub for words, sub in _leaves(build_parser())}


def _required_argv(sub: argparse.ArgumentParser, tmp: Path) -> list[str]:
    """Values for the command's required arguments: nonexistent paths, '1' for numbers, a shipped --config."""
    argv: list[str] = []
    for a in sub._actions:
        if isinstance(a, argparse._SubParsersAction) or not (a.required or not a.option_strings):
            continue
        if a.dest in ("help",):
            continue
        if a.dest == "config":
            value = "unet3d_cpu_demo"
        elif a.type in (int, float):
            value = "1"
        elif a.choices:
            value = str(next(iter(a.choices)))
        else:
            value = str(tmp / f"missing_{a.dest}")
        argv += [a.option_strings[0], value] if a.option_strings else [value]
    return argv


def _one_error_line(err: str, prog: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


def test_every_command_is_found():
    assert set(LEAVES) >= {"synth", "region targets", "region train", "gateway", "view", "cache"}
    assert len(LEAVES) == len(COMMANDS) + 1  # `region` holds two


@pytest.mark.parametrize("cmd", sorted(LEAVES))
def test_unknown_option_or_config_key_is_one_line_exit_2(cmd, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sub = LEAVES[cmd]
    rc = main([*cmd.split(), *_required_argv(sub, tmp_path), "--no-such-key", "x"])
    line = _one_error_line(capsys.readouterr().err, sub.prog)
    assert rc == EXIT_USAGE and ("no-such-key" in line or "no_such_key" in line)


def test_every_override_command_has_a_bad_value_case():
    assert {c for c, p in LEAVES.items() if p.get_default("accepts_overrides")} == set(BAD_VALUES)


@pytest.mark.parametrize("cmd", sorted(BAD_VALUES))
def test_wrongly_typed_config_override_is_one_line_exit_2(cmd, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sub = LEAVES[cmd]
    key, value = BAD_VALUES[cmd]
    rc = main([*cmd.split(), *_required_argv(sub, tmp_path), key, value])
    line = _one_error_line(capsys.readouterr().err, sub.prog)
    assert rc == EXIT_USAGE and key.lstrip("-") in line and value in line


@pytest.mark.parametrize("cmd", sorted(set(LEAVES) - {"synth"}))  # synth makes its input
def test_missing_inputs_are_one_line_exit_1(cmd, tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    sub = LEAVES[cmd]
    argv = [*cmd.split(), *_required_argv(sub, tmp_path)]
    if cmd == "train":  # a shipped config, so the missing input is the data folder
        argv += ["--data", str(tmp_path / "missing_pre"), "--cache", str(tmp_path / "missing_cache")]
    rc = main(argv)
    _one_error_line(capsys.readouterr().err, sub.prog)
    assert rc in (EXIT_FAILURE, EXIT_USAGE)
    if cmd != "train":  # train's --config is the only usage-level input
        assert rc == EXIT_FAILURE


def test_folds_means_fold_numbers_everywhere():
    with_folds = {c: p for c, p in LEAVES.items() if any("--folds" in a.option_strings for a in p._actions)}
    assert {"train", "oof", "pipelines", "package"} <= set(with_folds)
    for cmd, sub in with_folds.items():
        req = _required_argv(sub, Path("/nonexistent"))
        for given, expected in ((["0,2"], [0, 2]), (["0", "2"], [0, 2]), (["2,0", "2"], [0, 2]), (["all"], None)):
            args, _ = build_parser().parse_known_args([*cmd.split(), *req, "--folds", *given])
            assert args.folds == expected, (cmd, given)
        args, _ = build_parser().parse_known_args([*cmd.split(), *req])
        assert args.folds is None
    for cmd, sub in LEAVES.items():
        for a in sub._actions:
            if "--folds" in a.option_strings:
                assert isinstance(a, FoldsAction) and a.dest == "folds", cmd
            if "--folds-table" in a.option_strings:
                assert a.dest == "folds_table" and a.metavar == "PATH" and not isinstance(a, FoldsAction), cmd
            assert all(o in ("--folds", "--fold", "--folds-table") for o in a.option_strings if o.startswith("--fold")
                       and not o.startswith("--fold-")), (cmd, a.option_strings)


def test_folds_parser():
    assert parse_folds("0,1,2") == [0, 1, 2] and parse_folds("2 0") == [0, 2] and parse_folds(" 1, 3 ") == [1, 3]
    assert parse_folds("ALL") is None
    with pytest.raises(argparse.ArgumentTypeError, match="--folds-table"):
        parse_folds("weights/folds.parquet")
    for bad in ("", "-1", "a", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_folds(bad)


def test_bad_folds_value_is_one_line(capsys):
    assert main(["oof", "--weights", "W", "--folds", "data/folds.parquet"]) == EXIT_USAGE
    line = _one_error_line(capsys.readouterr().err, "rsna-aneurysm oof")
    assert "--folds-table" in line


def test_weights_is_the_one_run_folder_flag():
    with_weights = []
    for cmd, sub in LEAVES.items():
        opts = {o for a in sub._actions for o in a.option_strings}
        assert "--run" not in opts, cmd
        if "--weights" in opts:
            with_weights.append(cmd)
    assert {"oof", "pipelines", "mine", "predict", "package", "view", "region train"} <= set(with_weights)


def test_help_lists_commands_in_pipeline_order(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    section = out.split("COMMAND\n", 2)[-1].split("\noptions:")[0]
    listed = [line.split()[0] for line in section.splitlines() if line.startswith("    ") and line[4] != " "]
    assert listed == HELP_ORDER


def test_config_names_resolve_to_shipped_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config("unet3d_region_demo") == CONFIG_DIR / "unet3d_region_demo.json"
    assert resolve_config("unet3d_region_demo.json") == CONFIG_DIR / "unet3d_region_demo.json"
    assert resolve_config(None) is None
    (tmp_path / "unet3d_region_demo").write_text("{}")  # a file of that name wins
    assert resolve_config("unet3d_region_demo") == Path("unet3d_region_demo")
    with pytest.raises(ConfigError, match="shipped: .*unet3d_cpu_demo"):
        resolve_config("no_such_config")
    with pytest.raises(ConfigError, match="no such file"):
        resolve_config("sub/dir/unet3d_region_demo.json")


def test_config_name_works_for_every_config_flag(tmp_path, monkeypatch, capsys):
    """A shipped name reaches each command's config loader: a training config is no PreprocessConfig."""
    monkeypatch.chdir(tmp_path)
    assert main(["preprocess", "--data", "D", "--out", "O", "--config", "unet3d_cpu_demo"]) == EXIT_USAGE
    line = _one_error_line(capsys.readouterr().err, "rsna-aneurysm preprocess")
    assert "unknown config key" in line and "PreprocessConfig" in line


def test_error_classification():
    from rsna_aneurysm.io.dicom_fast import _Unsupported
    from rsna_aneurysm.layout import LayoutError

    assert exit_code_for(ConfigError("x")) == EXIT_USAGE
    assert exit_code_for(cli_common.UsageError("x")) == EXIT_USAGE
    assert exit_code_for(cli_common.CommandError("x")) == EXIT_FAILURE
    assert exit_code_for(LayoutError("x")) == EXIT_FAILURE
    assert exit_code_for(FileNotFoundError("x")) == EXIT_FAILURE
    kit_error = type("SomeError", (RuntimeError,), {"__module__": "rsna_aneurysm.fake"})
    assert exit_code_for(kit_error("x")) == EXIT_FAILURE
    assert exit_code_for(type("Sub", (kit_error,), {})("x")) == EXIT_FAILURE  # a subclass elsewhere counts too
    for bug in (ValueError("x"), KeyError("x"), _Unsupported("x"), RuntimeError("x")):
        assert exit_code_for(bug) is None


@pytest.mark.parametrize("name", ["rsna_aneurysm.infer.pipeline:WeightsError", "rsna_aneurysm.infer.oof:OOFError",
                                  "rsna_aneurysm.data.cache:CacheError",
                                  "rsna_aneurysm.io.dicom_slices:DicomSeriesError",
                                  "rsna_aneurysm.evaluate.thresholds:ThresholdFileError",
                                  "rsna_aneurysm.models.registry:UnknownModelError"])
def test_kit_errors_take_the_error_path(name, capsys):
    import importlib

    module, cls = name.split(":")
    exc = getattr(importlib.import_module(module), cls)

    def handler(args):
        raise exc("what went wrong")

    args = argparse.Namespace(func=handler, cmd_prog="rsna-aneurysm x")
    assert run_command(args) == EXIT_FAILURE
    assert _one_error_line(capsys.readouterr().err, "rsna-aneurysm x") == "rsna-aneurysm x: error: what went wrong"


def test_bugs_keep_their_traceback_and_debug_shows_it(monkeypatch, capsys):
    def bug(args):
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        run_command(argparse.Namespace(func=bug, cmd_prog="p"))

    def failing(args):
        raise cli_common.CommandError("first line\nsecond line")

    assert run_command(argparse.Namespace(func=failing, cmd_prog="p", debug=True)) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == "p: error: first line; second line"
    monkeypatch.setenv(cli_common.DEBUG_ENV, "1")
    assert run_command(argparse.Namespace(func=failing, cmd_prog="p")) == EXIT_FAILURE
    assert "Traceback" in capsys.readouterr().err


def test_subprocess_error_line_and_debug(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}
    env.pop(cli_common.DEBUG_ENV, None)
    argv = [sys.executable, "-m", "rsna_aneurysm.cli", "score", "--pred", str(tmp_path / "p.csv"), "--labels",
            str(tmp_path / "l.csv")]
    r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == EXIT_FAILURE and r.stdout == ""
    assert _one_error_line(r.stderr, "rsna-aneurysm score").endswith("p.csv: no such file")
    r = subprocess.run([*argv[:3], "--debug", *argv[3:]], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=120)
    assert r.returncode == EXIT_FAILURE and "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("rsna-aneurysm score: error: ")


# -- layering of the command modules -------------------------------------------------------------------------------

LAYERS = {name: 0 for name in ("constants", "volume", "config", "layout", "runtime", "io", "cli_common")}
LAYERS.update({name: i for i, name in enumerate(
    ("preprocess", "data", "models", "evaluate", "train", "region", "vessels", "roi", "infer", "kaggle", "viewer",
     "cli"), start=1)})
CLI_MODULES = sorted([*SRC.glob("*/cli.py"), *SRC.glob("*/*_cli.py")])


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(absolute module, at module level) of every rsna_aneurysm or other import in ``path``."""
    package = ".".join(("rsna_aneurysm", *path.relative_to(SRC).with_suffix("").parts[:-1]))
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            found.append((mod, id(node) in top))
    return found


def _layer(module: str) -> int:
    return LAYERS[module.split(".")[1]] if module.count(".") else LAYERS["cli"]


def test_command_modules_respect_the_layers():
    assert len(CLI_MODULES) >= 9
    for path in CLI_MODULES:
        own = path.relative_to(SRC).parts[0]
        for mod, top_level in _imports(path):
            if top_level:  # --help imports every command module: keep their top light
                assert mod.split(".")[0] in sys.stdlib_module_names or mod == "rsna_aneurysm.cli_common", (path, mod)
            if not mod.startswith("rsna_aneurysm."):
                continue
            assert _layer(mod) <= LAYERS[own], f"{path.relative_to(SRC)} imports the higher layer {mod}"
            assert not mod.endswith((".cli", "_cli")), f"{path.relative_to(SRC)} imports the command module {mod}"


def test_cli_common_is_base_layer():
    for mod, _ in _imports(SRC / "cli_common.py"):
        assert mod.split(".")[0] in sys.stdlib_module_names or mod in (
            "rsna_aneurysm.config", "rsna_aneurysm.layout", "rsna_aneurysm.constants"), mod


def test_region_train_per_fold_needs_a_folds_table(tmp_path, capsys):
    assert main(["region", "train", "--pre", str(tmp_path), "--weights", str(tmp_path / "w"), "--per-fold"]) == 2
    line = _one_error_line(capsys.readouterr().err, "rsna-aneurysm region train")
    assert line.endswith("--per-fold needs --folds-table")
