from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rsna_aneurysm.preprocess.geometry import reorient_canonical, resample
from rsna_aneurysm.preprocess.intensity import n4_correct, normalize
from rsna_aneurysm.preprocess.mask import compute_mask, register_mask_fn
from rsna_aneurysm.volume import Volume

AXES = [np.eye(3)[:, list(p)] * np.array(s) for p in itertools.permutations(range(3))
        for s in itertools.product((1, -1), repeat=3)]


@pytest.mark.parametrize("direction", AXES[::5] + [Rotation.from_euler("xyz", [12, -8, 20], degrees=True).as_matrix()])
def test_reorient_keeps_every_voxel_at_its_world_position(direction):
    rng = np.random.default_rng(0)
    v = Volume(rng.random((4, 5, 6)), (0.5, 0.8, 2.0), (3.0, -7.0, 11.0), direction, meta={"sop_uids": list("abcd"),
                                                                                       "frames": [None] * 4})
    r = reorient_canonical(v)
    assert r.orientation_code() == "LPS"
    assert np.all(np.diag(r.direction) > 0.7)
    # Every source voxel value appears at the same world position in the reoriented volume.
    k, j, i = np.indices(v.array.shape).reshape(3, -1)
    world = v.index_to_world(np.c_[i, j, k])
    ri, rj, rk = np.rint(r.world_to_index(world)).astype(int).T
    assert np.allclose(r.array[rk, rj, ri], v.array[k, j, i])
    assert r.meta["source_sop_uids"] == list("abcd") and "sop_uids" not in r.meta


def test_resample_keeps_a_bright_point_at_its_world_position():
    d = Rotation.from_euler("xyz", [0, 25, -15], degrees=True).as_matrix()
    arr = np.zeros((30, 40, 40), np.float32)
    arr[17, 23, 11] = 1000.0
    v = Volume(arr, (0.6, 0.6, 0.9), (-10.0, 4.0, 2.0), d)
    target = v.index_to_world([11, 23, 17])
    out = resample(reorient_canonical(v), (0.5, 0.5, 0.5))
    assert np.allclose(out.direction, np.eye(3)) and out.spacing == (0.5, 0.5, 0.5)
    peak = np.unravel_index(np.argmax(out.array), out.array.shape)[::-1]
    assert np.linalg.norm(out.index_to_world(peak) - target) <= 0.5 * np.sqrt(3) * 0.5 + 1e-6
    assert out.array.min() == 0.0  # outside the source filled with its minimum


def _phantom(modality: str) -> Volume:
    """A head-like ellipsoid: skull shell and brain in air (CT HU), or bright tissue with a bias field (MR)."""
    k, j, i = np.indices((40, 48, 48)).astype(np.float32)
    r = np.sqrt(((i - 24) / 18) ** 2 + ((j - 24) / 20) ** 2 + ((k - 20) / 16) ** 2)
    if modality == "CTA":
        a = np.full(r.shape, -1000.0, np.float32)
        a[r < 1.0] = 1000.0
        a[r < 0.88] = 35.0
        return Volume(a, (2.0, 2.0, 2.0), (0, 0, 0), modality="CTA", meta={"dicom_modality": "CT"})
    a = np.where(r < 1.0, 300.0, 5.0).astype(np.float32) * (1.0 + 0.4 * i / 48)
    a += np.random.default_rng(0).normal(0, 3, a.shape).astype(np.float32)
    return Volume(a, (2.0, 2.0, 2.0), (0, 0, 0), modality="MRA", meta={"dicom_modality": "MR"})


@pytest.mark.parametrize("modality", ["CTA", "MRA"])
def test_head_mask_covers_the_head_and_not_the_air(modality):
    v = _phantom(modality)
    m = compute_mask(v, "head")
    k, j, i = np.indices(v.array.shape)
    r = np.sqrt(((i - 24) / 18) ** 2 + ((j - 24) / 20) ** 2 + ((k - 20) / 16) ** 2)
    assert m[r < 0.9].mean() > 0.99  # brain inside, including the cavity inside the CT skull
    assert m[r > 1.15].mean() < 0.01
    brain = compute_mask(v, "brain")
    assert 0 < brain.sum() < m.sum()


def test_custom_mask_and_unknown_kind():
    v = _phantom("CTA")
    register_mask_fn("ones", lambda vol: np.ones(vol.array.shape, np.uint8))
    assert compute_mask(v, "ones").all()
    with pytest.raises(ValueError, match="unknown mask kind"):
        compute_mask(v, "synthstrip")


def test_normalize_ct_window_and_mr_percentiles():
    ct = normalize(_phantom("CTA"), ct_window=(-100.0, 700.0))
    assert ct.array.min() == 0.0 and ct.array.max() == 1.0
    assert np.isclose(ct.array[20, 24, 24], (35 + 100) / 800)
    mr = _phantom("MRA")
    out = normalize(mr, mr_percentiles=(1, 99), mask=compute_mask(mr, "head"))
    assert 0.0 <= out.array.min() and out.array.max() <= 1.0 and out.meta["intensity_range"][1] > 200


def test_n4_flattens_a_bias_field():
    v = _phantom("MRA")
    k, j, i = np.indices(v.array.shape)
    inside = np.sqrt(((i - 24) / 18) ** 2 + ((j - 24) / 20) ** 2 + ((k - 20) / 16) ** 2) < 0.95
    m = inside.astype(np.uint8)
    before = v.array[inside]
    after = n4_correct(v, mask=m, shrink=2).array[inside]
    cv = lambda x: np.std(x) / np.mean(x)  # noqa: E731
    assert cv(after) < 0.6 * cv(before)
