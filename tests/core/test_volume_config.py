from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rsna_aneurysm.config import ConfigError, load_config, parse_overrides, save_config
from rsna_aneurysm.constants import LABEL_COLS, LR_PERMUTATION, SEG_LABELS, TRAIN_COLS
from rsna_aneurysm.volume import Volume


def _oblique(seed: int = 0) -> Volume:
    rng = np.random.default_rng(seed)
    d = Rotation.from_euler("xyz", rng.uniform(-30, 30, 3), degrees=True).as_matrix()
    return Volume(rng.random((5, 6, 7)).astype(np.float32), (0.5, 0.7, 2.0), (10.0, -20.0, 30.0), d)


def test_index_world_round_trip_and_affine():
    v = _oblique()
    ijk = np.array([[0, 0, 0], [6, 5, 4], [1.5, 2.25, 3.75]])
    xyz = v.index_to_world(ijk)
    assert np.allclose(xyz[0], v.origin)
    assert np.allclose(v.world_to_index(xyz), ijk)
    h = np.c_[ijk, np.ones(3)]
    assert np.allclose((v.affine @ h.T).T[:, :3], xyz)
    ras = (v.ras_affine @ h.T).T[:, :3]
    assert np.allclose(ras, xyz * [-1, -1, 1])
    # Step along i moves by spacing[0] along the first direction column.
    assert np.allclose(v.index_to_world([1, 0, 0]) - v.origin, v.direction[:, 0] * 0.5)


def test_sitk_round_trip_keeps_geometry():
    v = _oblique(1)
    img = v.to_sitk()
    assert np.allclose(img.TransformContinuousIndexToPhysicalPoint((1.0, 2.0, 3.0)), v.index_to_world([1, 2, 3]))
    w = Volume.from_sitk(img)
    assert np.array_equal(w.array, v.array) and np.allclose(w.direction, v.direction)


def test_orientation_code():
    assert Volume(np.zeros((2, 2, 2)), (1, 1, 1), (0, 0, 0)).orientation_code() == "LPS"
    flip = np.diag([-1.0, 1.0, -1.0])
    assert Volume(np.zeros((2, 2, 2)), (1, 1, 1), (0, 0, 0), flip).orientation_code() == "RPI"


def test_constants_match_competition():
    assert len(TRAIN_COLS) == 18 and TRAIN_COLS[-1] == "Aneurysm Present" and TRAIN_COLS[4] == LABEL_COLS[0]
    assert sorted(SEG_LABELS) == list(range(1, 14))
    assert set(SEG_LABELS.values()) == set(LABEL_COLS[:-1])
    for i, j in enumerate(LR_PERMUTATION):
        a, b = LABEL_COLS[i], LABEL_COLS[j]
        if a.startswith("Left "):
            assert b == "Right " + a[5:]
        elif not a.startswith("Right "):
            assert i == j


@dataclasses.dataclass
class _Inner:
    lr: float = 1e-3
    steps: int = 10


@dataclasses.dataclass
class _Cfg:
    name: str = "a"
    size: tuple[int, int, int] = (1, 2, 3)
    mode: Literal["x", "y"] = "x"
    opt: float | None = None
    flag: bool = False
    inner: _Inner = dataclasses.field(default_factory=_Inner)


def test_config_file_overrides_and_errors(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"name": "b", "inner": {"lr": 0.5}}')
    cfg = load_config(_Cfg, p, parse_overrides(["--inner.steps", "7", "--size=4,5,6", "--flag", "true"]))
    assert cfg.name == "b" and cfg.inner.lr == 0.5 and cfg.inner.steps == 7 and cfg.size == (4, 5, 6) and cfg.flag
    save_config(cfg, tmp_path / "out.json")
    assert load_config(_Cfg, tmp_path / "out.json") == cfg
    with pytest.raises(ConfigError, match="inner.bogus"):
        load_config(_Cfg, None, {"inner.bogus": 1})
    p.write_text('{"nmae": "b"}')
    with pytest.raises(ConfigError, match="nmae"):
        load_config(_Cfg, p)
    with pytest.raises(ConfigError, match="'inner.steps'"):
        load_config(_Cfg, None, {"inner.steps": "many"})
    with pytest.raises(ConfigError, match="'mode'"):
        load_config(_Cfg, None, {"mode": "z"})
    with pytest.raises(ConfigError, match="no value"):
        parse_overrides(["--name"])
