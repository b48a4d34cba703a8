"""Patch cache: positives hold their aneurysm, negatives keep the safety radius, reruns do no work, damaged
entries are rebuilt, a broken series is skipped, and the dataset reads the entries back by memory mapping."""

from __future__ import annotations

import json
import pickle

import numpy as np
import polars as pl
import pytest
from toy import write_toy_preprocessed

from rsna_aneurysm.constants import ANEURYSM_PRESENT, ID_COL, LABEL_COLS
from rsna_aneurysm.data.cache import CacheConfig, build_cache, read_index
from rsna_aneurysm.data.cache_entry import check_entry, entry_paths
from rsna_aneurysm.data.datasets import PatchDataset, VolumePatchDataset
from rsna_aneurysm.data.patches import box_distance_mm, crop_patch, sphere_mask, to_patch_coords

CFG = CacheConfig(patch_size=(16, 16, 16), jitter_mm=4.0, positives_per_aneurysm=3, negative_ratio=1.5,
                  safety_radius_mm=5.0, sphere_radius_mm=2.5, hard_negative_fraction=0.5)


@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    return write_toy_preprocessed(tmp_path_factory.mktemp("pre"), n_series=6, shape=(40, 40, 40), seed=3)


def _points(pre) -> dict[str, np.ndarray]:
    locs = pl.read_parquet(pre / "localizers.parquet")
    out: dict[str, list] = {}
    for r in locs.iter_rows(named=True):
        out.setdefault(r[ID_COL], []).append([r["k"], r["j"], r["i"]])
    return {k: np.asarray(v) for k, v in out.items()}


def test_positives_contain_their_aneurysm_and_negatives_keep_the_safety_radius(pre, tmp_path):
    res = build_cache(pre, tmp_path / "c", CFG, progress=False)
    idx = res.index
    assert res.built == 6 and not res.failed
    assert set(idx["kind"].unique()) == {"pos", "hard", "neg"}
    points = _points(pre)
    half_mm = np.asarray(CFG.patch_size) / 2 * CFG.spacing_mm
    ds = PatchDataset(tmp_path / "c", idx)
    for r, row in enumerate(idx.iter_rows(named=True)):
        center = np.array([row["center_k"], row["center_j"], row["center_i"]])
        pts = points.get(row[ID_COL], np.zeros((0, 3)))
        item = ds[r]
        if row["kind"] == "pos":
            assert row[ANEURYSM_PRESENT] == 1
            p_in = to_patch_coords(pts, center, CFG.patch_size, (1, 1, 1))
            near = np.abs(p_in - np.asarray(CFG.patch_size) // 2).max(axis=1)
            assert near.min() <= CFG.jitter_mm + 0.5  # the jittered-around aneurysm is inside
            assert item["mask"].sum() > 0  # its target sphere is drawn
            # The aneurysm (intensity 1.0 in the toy volumes) is visible in the patch.
            assert item["image"].max() > 0.9
        else:
            assert row[ANEURYSM_PRESENT] == 0 and sum(row[c] for c in LABEL_COLS) == 0
            assert item["mask"].sum() == 0
            assert box_distance_mm(center[None], pts, half_mm, np.ones(3))[0] > CFG.safety_radius_mm
    # Location labels of positives name the aneurysm's location.
    locs = pl.read_parquet(pre / "localizers.parquet")
    pos = idx.filter(pl.col("kind") == "pos")
    for r in pos.iter_rows(named=True):
        names = set(locs.filter(pl.col(ID_COL) == r[ID_COL])["location"])
        assert any(r[n] == 1 for n in names)
    assert sum(r[n] for r in pos.iter_rows(named=True) for n in LABEL_COLS[:-1]) >= len(pos)
    # Folds: every series has one, the index is sorted and complete.
    assert idx.group_by(ID_COL).agg(pl.col("fold").n_unique())["fold"].max() == 1
    assert (idx["fold"] >= 0).all()


def test_rerun_does_no_work_and_damaged_entries_are_rebuilt(pre, tmp_path):
    out = tmp_path / "c"
    first = build_cache(pre, out, CFG, progress=False)
    again = build_cache(pre, out, CFG, progress=False)
    assert (again.built, again.reused, again.rebuilt_corrupt) == (0, 6, 0)
    assert again.index.equals(first.index)
    keys = sorted(first.index["entry"].unique())
    paths = entry_paths(out / "entries", keys[0])
    # Flip one byte inside the patch data: same size, wrong checksum.
    data = bytearray(paths["patches"].read_bytes())
    data[-10] ^= 0xFF
    paths["patches"].write_bytes(bytes(data))
    assert check_entry(out / "entries", keys[0])[0] is None
    # Truncate another entry's mask file.
    p2 = entry_paths(out / "entries", keys[1])["mask"]
    p2.write_bytes(p2.read_bytes()[:50])
    third = build_cache(pre, out, CFG, progress=False)
    assert (third.built, third.reused, third.rebuilt_corrupt) == (2, 4, 2)
    assert third.index.equals(first.index)
    assert check_entry(out / "entries", keys[0])[0] is not None
    np.testing.assert_array_equal(np.load(paths["patches"], mmap_mode="r"),
                                  np.load(entry_paths(out / "entries", keys[0])["patches"]))
    # A changed setting makes new entries (different keys); the index follows.
    other = build_cache(pre, out, CacheConfig(**{**CFG.__dict__, "positives_per_aneurysm": 1}), progress=False)
    assert other.built == 6 and set(other.index["entry"]).isdisjoint(keys)
    assert read_index(out).equals(other.index)


def test_broken_series_is_logged_and_skipped_in_parallel_build(tmp_path, caplog):
    pre = write_toy_preprocessed(tmp_path / "pre", n_series=4, shape=(32, 32, 32), seed=5, broken=1)
    res = build_cache(pre, tmp_path / "c", CFG, workers=2, progress=False)
    assert len(res.failed) == 1 and res.built == 3
    bad = next(iter(res.failed))
    assert bad not in set(res.index[ID_COL]) and "not a readable NIfTI" in res.failed[bad]
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert bad in report["failed"]


def test_memory_mapped_dataset_matches_volume_baseline(pre, tmp_path):
    res = build_cache(pre, tmp_path / "c", CFG, progress=False)
    cached = PatchDataset(tmp_path / "c", res.index)
    base = VolumePatchDataset(pre, res.index, CFG)
    for i in (0, len(cached) // 2, len(cached) - 1):
        a, b = cached[i], base[i]
        assert a["image"].shape == (1, 16, 16, 16)
        np.testing.assert_allclose(a["image"].numpy(), b["image"].numpy(), atol=1e-3)
        np.testing.assert_array_equal(a["mask"].numpy(), b["mask"].numpy())
        np.testing.assert_array_equal(a["labels"].numpy(), b["labels"].numpy())
    patches, _ = cached._arrays(res.index["entry"][0])
    assert isinstance(patches, np.memmap)


def test_patch_helpers():
    arr = np.arange(10 * 10 * 10, dtype=np.float32).reshape(10, 10, 10)
    p = crop_patch(arr, np.array([0, 5, 9]), (4, 4, 4))
    assert p.shape == (4, 4, 4)
    assert p[0, 0, 0] == 0 and p[2, 2, 2] == arr[0, 5, 9]  # zero-padded outside, centre at size // 2
    half = crop_patch(arr, np.array([5, 5, 5]), (4, 4, 4), scale=(2.0, 2.0, 2.0))
    assert half[2, 2, 2] == pytest.approx(arr[5, 5, 5]) and half[3, 2, 2] == pytest.approx(arr[7, 5, 5])
    m = sphere_mask((9, 9, 9), np.array([[4, 4, 4]]), np.array([2.0, 2.0, 2.0]))
    assert m[4, 4, 4] and m[4, 4, 6] and not m[4, 4, 7] and m.sum() == 33
    assert box_distance_mm(np.array([[0, 0, 0]]), np.array([[0, 0, 10]]), np.array([4, 4, 4]), np.ones(3))[0] == 6


def _cache_cli(argv: list[str]) -> int:
    from rsna_aneurysm.cli import main

    return main(argv)


def test_cache_command_reads_a_training_config_and_overrides(pre, tmp_path, capsys):
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"epochs": 2, "cache": {"patch_size": [12, 12, 12], "positives_per_aneurysm": 2}}))
    out = tmp_path / "c"
    assert _cache_cli(["cache", "--data", str(pre), "--out", str(out), "--config", str(cfg), "--workers", "1",
                       "--cache.jitter_mm", "2"]) == 0
    saved = json.loads((out / "cache_config.json").read_text())
    assert saved["patch_size"] == [12, 12, 12] and saved["positives_per_aneurysm"] == 2 and saved["jitter_mm"] == 2
    assert "6 built" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cache": {"patch_sise": [8, 8, 8]}}))
    assert _cache_cli(["cache", "--data", str(pre), "--out", str(out), "--config", str(bad)]) == 2


def test_dataset_keeps_a_bounded_number_of_entries_mapped(pre, tmp_path):
    res = build_cache(pre, tmp_path / "c", CFG, progress=False)
    ds = PatchDataset(tmp_path / "c", res.index, max_open=2)
    for i in range(len(ds)):
        ds[i]
        assert len(ds._open) <= 2
    clone = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker receives: no open maps
    assert len(clone._open) == 0 and clone[0]["image"].shape == (1, 16, 16, 16)


@pytest.mark.parametrize("modality, expect", [("CTA", "bright"), ("MRI T2", "dark")])
def test_hard_negatives_sit_on_bright_arteries_or_on_dark_flow_voids(modality, expect):
    from rsna_aneurysm.data.cache import SeriesTask
    from rsna_aneurysm.data.cache_entry import _seeded_rng, sample_centers

    arr = np.full((48, 48, 48), 0.5, dtype=np.float32)
    arr[6:14, 6:14, 8:40] = 1.0  # a bright tube (CTA artery), 2 % of the voxels
    arr[34:42, 8:40, 34:42] = 0.0  # a dark tube (T2 flow void)
    head = np.ones(arr.shape, dtype=bool)
    cfg = CacheConfig(patch_size=(8, 8, 8), jitter_mm=0.0, hard_negative_fraction=1.0, hard_negative_depth_mm=0.0,
                      hard_negative_percentile=99.0, safety_radius_mm=1.0)
    task = SeriesTask("uid", "v.npy", None, [], [], n_negatives=12, modality=modality)
    centers, kinds = sample_centers(arr, head, task, np.ones(3), cfg, _seeded_rng(0, "uid"))
    hard = centers[np.asarray(kinds) == "hard"]
    assert len(hard) == 12
    values = arr[hard[:, 0], hard[:, 1], hard[:, 2]]
    assert np.all(values == (1.0 if expect == "bright" else 0.0)), values
