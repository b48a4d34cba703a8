"""Bad configs fail at once naming the key; shipped configs load; the CLI reports config errors cleanly."""

from __future__ import annotations

import json

import pytest

from rsna_aneurysm.cli import main
from rsna_aneurysm.cli_common import resolve_config
from rsna_aneurysm.config import ConfigError
from rsna_aneurysm.train.config import TrainConfig, load_train_config

SHIPPED = ["unet3d_cpu_demo", "unet3d_seed_focal", "cnn3d_baseline", "timm25d_resnet18"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load_and_build_their_model(name):
    from rsna_aneurysm.models import create_model

    cfg = load_train_config(resolve_config(name))
    assert isinstance(cfg, TrainConfig)
    create_model(cfg.model.name, **cfg.model.kwargs)


@pytest.mark.parametrize(("data", "key"), [
    ({"epochs": 3, "epochz": 4}, "epochz"),
    ({"optim": {"lr": 1e-3, "learning_rate": 1}}, "optim.learning_rate"),
    ({"batch_size": "many"}, "batch_size"),
    ({"cache": {"patch_size": [32, 32]}}, "cache.patch_size"),
    ({"loss": {"name": "hinge"}}, "loss.name"),
    ({"model": {"name": "resnet_4d"}}, "model.name"),
    ({"model": {"name": "cnn3d", "kwargs": {"chanels": [4, 8, 16]}}}, "model.kwargs.chanels"),
    ({"loss": {"pos_weight": [1.0, 2.0]}}, "loss.pos_weight"),
    ({"augment": {"flip_lr": "often"}}, "augment.flip_lr"),
    ({"cache": {"hard_negative_dark_modalities": ["T2"]}}, "cache.hard_negative_dark_modalities"),
])
def test_bad_config_fails_naming_the_key(tmp_path, data, key):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_train_config(path)


def test_bad_override_fails_naming_the_key():
    with pytest.raises(ConfigError, match="optim.lrr"):
        load_train_config(None, {"optim.lrr": "1"})
    with pytest.raises(ConfigError, match="epochs"):
        load_train_config(None, {"epochs": "0"})


def test_cli_reports_a_bad_config_without_training(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"model": {"name": "nope"}}))
    assert main(["train", "--config", str(path), "--fold", "0"]) == 2
    err = capsys.readouterr().err
    assert "model.name" in err and "nope" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "weights").exists()
