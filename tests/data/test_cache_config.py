"""Cache settings check themselves: ``rsna-aneurysm cache`` refuses what ``train`` refuses, with the same message
(the layering itself is ``tests/core/test_layers.py``)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from rsna_aneurysm.cli_common import KitArgumentParser, run_command
from rsna_aneurysm.config import ConfigError
from rsna_aneurysm.constants import ID_COL
from rsna_aneurysm.data.cache_cli import add_cache_parser, load_cache_config
from rsna_aneurysm.data.cache_config import CacheConfig
from rsna_aneurysm.layout import LayoutError, read_region_targets
from rsna_aneurysm.train.config import load_train_config

TYPO = {"cache": {"hard_negative_dark_modalities": ["MRI T2", "T2"]}}


def _cache_command(argv: list[str]) -> int:
    """``rsna-aneurysm cache ...`` as ``rsna_aneurysm.cli.main`` runs it: the parser, then the one error path."""
    parser = KitArgumentParser(prog="rsna-aneurysm")
    add_cache_parser(parser.add_subparsers(dest="command"))
    args, extra = parser.parse_known_args(["cache", *argv])
    args.overrides = extra
    return run_command(args)


def test_cache_command_refuses_a_modality_typo_like_train(tmp_path, capsys) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(TYPO))
    with pytest.raises(ConfigError) as from_train:
        load_train_config(path)
    with pytest.raises(ConfigError) as from_cache:
        load_cache_config(str(path), {})
    assert str(from_cache.value) == str(from_train.value)
    assert "cache.hard_negative_dark_modalities" in str(from_cache.value) and "'T2'" in str(from_cache.value)

    out = tmp_path / "cache"
    assert _cache_command(["--data", str(tmp_path / "pre"), "--out", str(out), "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("rsna-aneurysm cache: error: config key 'cache.hard_negative_dark_modalities'")
    assert _cache_command(["--data", str(tmp_path / "pre"), "--out", str(out),
                           "--cache.hard_negative_dark_modalities", "CTA,MRI-T2"]) == 2
    err = capsys.readouterr().err
    assert "cache.hard_negative_dark_modalities" in err and "MRI-T2" in err and "Traceback" not in err
    assert not out.exists()  # refused before any work


def test_cache_config_checks_itself_however_it_is_built() -> None:
    with pytest.raises(ConfigError, match="hard_negative_dark_modalities"):
        CacheConfig(hard_negative_dark_modalities=("T2",))
    with pytest.raises(ConfigError, match="patch_size"):
        CacheConfig(patch_size=(2, 64, 64))
    with pytest.raises(ConfigError, match="hard_negative_fraction"):
        CacheConfig(hard_negative_fraction=1.5)
    with pytest.raises(ConfigError, match="region_box_mm"):
        CacheConfig(region_box_mm=(60.0, 0.0, 50.0))
    with pytest.raises(ConfigError, match=r"'cache\.spacing_mm'"):
        load_cache_config(None, {"cache.spacing_mm": "0"})
    ok = load_cache_config(None, {"hard_negative_dark_modalities": "MRI T2,MRI T1post"})
    assert ok.hard_negative_dark_modalities == ("MRI T2", "MRI T1post")


def test_region_targets_are_read_through_the_layout(tmp_path) -> None:
    with pytest.raises(LayoutError, match="rsna-aneurysm region targets"):
        read_region_targets(tmp_path)
    pl.DataFrame({ID_COL: ["a"], "center_x": [1.0]}).write_parquet(tmp_path / "region_targets.parquet")
    assert read_region_targets(tmp_path)[ID_COL].to_list() == ["a"]

