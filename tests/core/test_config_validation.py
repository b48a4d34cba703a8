"""The validation convention: each config class checks its own fields when it is built, and errors name the full
dotted key however deep the class sits and however the config was made."""

from __future__ import annotations

import dataclasses
import json
import pickle
from dataclasses import dataclass, field

import pytest

from rsna_aneurysm.config import ConfigError, apply_overrides, from_dict, load_config, require
from rsna_aneurysm.models.sliding_window import SlidingWindowConfig
from rsna_aneurysm.preprocess.pipeline import PreprocessConfig
from rsna_aneurysm.train.config import TrainConfig


@dataclass
class Inner:
    size: int = 4

    def __post_init__(self) -> None:
        require(self.size >= 4, "size", f"at least 4, got {self.size}")


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    more: list[int] = field(default_factory=list)


def test_errors_name_the_nested_key_however_the_config_is_made(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^config key 'inner\.size': at least 4, got 2$"):
        from_dict(Outer, {"inner": {"size": 2}})
    with pytest.raises(ConfigError, match=r"'inner\.size'"):
        apply_overrides(Outer(), {"inner.size": "3"})
    with pytest.raises(ConfigError, match=r"'outer\.inner\.size'"):
        apply_overrides(Outer(), {"inner.size": "3"}, prefix="outer.")
    with pytest.raises(ConfigError, match=r"unknown config key 'outer\.inner\.sise'"):
        apply_overrides(Outer(), {"inner.sise": "3"}, prefix="outer.")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"inner": {"size": 1}}))
    with pytest.raises(ConfigError, match=r"'inner\.size'"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match=r"^config key 'size'"):  # built directly: the class's own key
        dataclasses.replace(Inner(), size=0)
    assert from_dict(Outer, {"inner": {"size": 9}}).inner.size == 9


def test_config_error_keeps_its_key_through_pickling() -> None:
    err = pickle.loads(pickle.dumps(ConfigError("at least 4", "size").within("cache.")))
    assert (err.key, err.reason, str(err)) == ("cache.size", "at least 4", "config key 'cache.size': at least 4")
    plain = ConfigError("no such file")
    assert plain.within("cache.") is plain and str(plain) == "no such file"


@pytest.mark.parametrize(("cls", "data", "key"), [
    (TrainConfig, {"device": "gpu"}, "device"),
    (TrainConfig, {"model": {"name": "resnet_4d"}}, "model.name"),
    (TrainConfig, {"data": {"workers": -1}}, "data.workers"),
    (SlidingWindowConfig, {"device": "cuda0"}, "device"),
    (PreprocessConfig, {"spacing": [1.0, 0.0, 1.0]}, "spacing"),
    (PreprocessConfig, {"mr_percentiles": [99.0, 1.0]}, "mr_percentiles"),
    (PreprocessConfig, {"n4_shrink": 0}, "n4_shrink"),
])
def test_config_classes_refuse_bad_values(cls, data, key) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'".replace(".", r"\.")):
        from_dict(cls, data)


def test_precision_and_device_names_are_checked_on_direct_construction() -> None:
    with pytest.raises(ConfigError, match="'precision'"):
        SlidingWindowConfig(precision="half")
    assert SlidingWindowConfig(device="cuda:1", precision="bf16").device == "cuda:1"

