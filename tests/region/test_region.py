"""Two-stage pipeline: region targets, the region finder and its fallback, region crops mapped back to the world."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from rsna_aneurysm.cli import main
from rsna_aneurysm.constants import ID_COL, LOCATION_COLS
from rsna_aneurysm.data.synth import generate_dataset
from rsna_aneurysm.preprocess.dataset import preprocess_dataset
from rsna_aneurysm.preprocess.pipeline import PreprocessConfig
from rsna_aneurysm.region.finder import FinderConfig, RegionBox, RegionConfig, RegionLocator
from rsna_aneurysm.region.geometry import Grid, sample
from rsna_aneurysm.region.stage_one import LocationAtlas, RegionStage, crop_region, find_peaks, load_region
from rsna_aneurysm.region.targets import build_targets
from rsna_aneurysm.region.train_finder import train_region_finder
from rsna_aneurysm.volume import Volume


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("region")
    generate_dataset(root / "data", n_series=8, preset="tiny", seed=5, n_test=0)
    preprocess_dataset(root / "data", root / "pre", PreprocessConfig(spacing=(2.0, 2.0, 2.0)))
    build_targets(root / "pre", root / "data")
    return root / "data", root / "pre"


def test_targets_and_atlas_come_from_the_synthetic_vessel_tree(prepared: tuple[Path, Path]) -> None:
    data, pre = prepared
    targets = pl.read_parquet(pre / "region_targets.parquet")
    manifest = pl.read_parquet(pre / "manifest.parquet").filter(pl.col("status") == "ok")
    assert sorted(targets[ID_COL].to_list()) == sorted(manifest[ID_COL].to_list())
    assert set(targets["source"]) == {"truth"}
    truth = json.loads((data / "synth_truth.json").read_text())
    for r in targets.iter_rows(named=True):
        # The centre sits among the 13 typical aneurysm sites of the series (a few cm across).
        sites = np.array(list(truth[r[ID_COL]]["landmarks_lps"].values()))
        c = np.array([r["center_x"], r["center_y"], r["center_z"]])
        assert np.linalg.norm(c - sites.mean(axis=0)) < 15.0
        assert 20.0 < r["extent_x"] < 60.0
    atlas = pl.read_parquet(pre / "region_atlas.parquet")
    assert set(atlas["location"]) == set(LOCATION_COLS)
    # Left arteries lie at larger x (LPS: +x is the patient's left) than the centre, right ones at smaller x.
    mean_dx = dict(atlas.group_by("location").agg(pl.col("dx").mean()).rows())
    assert mean_dx["Left Middle Cerebral Artery"] > 20 > -20 > mean_dx["Right Middle Cerebral Artery"]


def test_localizer_only_series_get_a_centre_from_location_offsets(prepared: tuple[Path, Path], tmp_path: Path
                                                                   ) -> None:
    data, pre = prepared
    # Without the synthetic truth (real data has none) no series has a target, so none can be derived either...
    pre2 = tmp_path / "pre"
    pre2.mkdir()
    for name in ("manifest.parquet", "localizers.parquet"):
        (pre2 / name).write_bytes((pre / name).read_bytes())
    targets, atlas = build_targets(pre2, None)
    assert targets.height == 0 and atlas.height == 0
    # ...but with the truth of half the series, the positives among the rest get a localizer-derived centre.
    truth = json.loads((data / "synth_truth.json").read_text())
    locs = pl.read_parquet(pre / "localizers.parquet").filter(pl.col("status") == "ok")
    positives = sorted(set(locs[ID_COL].to_list()))
    assert len(positives) >= 2
    keep = {u: truth[u] for u in list(truth)[: len(truth) // 2]} | {positives[0]: truth[positives[0]]}
    keep = {u: v for u, v in keep.items() if u != positives[-1]}
    (tmp_path / "synth_truth.json").write_text(json.dumps(keep))
    targets, _ = build_targets(pre2, tmp_path)
    derived = targets.filter(pl.col("source") == "localizer")
    assert positives[-1] in derived[ID_COL].to_list()
    full = pl.read_parquet(pre / "region_targets.parquet").filter(pl.col(ID_COL) == positives[-1]).row(0, named=True)
    got = derived.filter(pl.col(ID_COL) == positives[-1]).row(0, named=True)
    err = np.linalg.norm([got[f"center_{a}"] - full[f"center_{a}"] for a in "xyz"])
    assert err < 25.0  # within the spread of an aneurysm along its artery


def _volume(shape=(40, 50, 60), spacing=(1.0, 1.0, 1.0), origin=(-30.0, -25.0, -20.0)) -> Volume:
    rng = np.random.default_rng(0)
    return Volume(array=rng.random(shape).astype(np.float32), spacing=spacing, origin=origin)


def test_region_crop_is_an_exact_copy_and_maps_back_to_the_world() -> None:
    vol = _volume()
    box = RegionBox(center=np.array([1.3, -0.6, 2.2]), size_mm=np.array([21.0, 16.0, 11.0]), source="finder")
    crop, grid = crop_region(vol, box)
    assert crop.shape == (11, 16, 21)
    # Snapped onto the volume's voxels: every crop voxel equals the volume voxel at the same world position.
    kji = np.argwhere(np.ones(crop.shape, dtype=bool))
    src = np.rint(vol.world_to_index(grid.index_to_world(kji))[:, ::-1]).astype(int)
    assert np.array_equal(crop[tuple(kji.T)], vol.array[tuple(src.T)])
    assert np.allclose(grid.center, box.center, atol=0.5 + 1e-9)
    # A crop reaching outside the volume is filled, not wrapped.
    far = RegionBox(center=np.array([25.0, 0.0, 0.0]), size_mm=np.array([20.0, 10.0, 10.0]), source="fallback")
    crop2, grid2 = crop_region(vol, far, fill=-1.0)
    src2 = vol.world_to_index(grid2.index_to_world(np.argwhere(np.ones(crop2.shape, dtype=bool))))[:, ::-1]
    outside = np.any((src2 < -0.5) | (src2 > np.asarray(vol.array.shape) - 0.5), axis=1)
    assert outside.any() and (~outside).any()
    assert (crop2.reshape(-1)[outside] == -1.0).all() and (crop2.reshape(-1)[~outside] >= 0.0).all()


def test_resampled_crop_heatmap_peak_lands_on_the_aneurysm() -> None:
    # A bright sphere (an "aneurysm") at a known world point in an anisotropic volume, cropped at another spacing.
    spacing = (0.8, 0.8, 1.5)
    vol = Volume(array=np.zeros((40, 80, 90), dtype=np.float32), spacing=spacing, origin=(-40.0, -30.0, -25.0))
    target = np.array([3.7, 5.2, 4.1])
    idx = np.argwhere(np.ones(vol.array.shape, dtype=bool))
    d = np.linalg.norm(vol.index_to_world(idx[:, ::-1]) - target, axis=1)
    vol.array[tuple(idx.T)] = np.exp(-0.5 * (d / 2.5) ** 2)
    box = RegionBox(center=np.array([0.0, 0.0, 0.0]), size_mm=np.array([40.0, 40.0, 30.0]), source="finder")
    for sp in (1.0, 0.7):
        grid = box.grid(sp)
        crop = sample(vol, grid, prefilter=False)
        peaks, _ = find_peaks(crop, 1, 3.0)
        assert np.linalg.norm(grid.index_to_world(peaks.astype(float))[0] - target) <= sp * np.sqrt(3)


def test_coarse_view_prefilters_and_keeps_world_positions() -> None:
    vol = _volume(shape=(60, 60, 60))
    grid = Grid.centred(np.array([0.0, 5.0, 10.0]), (10, 10, 10), 4.0)
    view = sample(vol, grid)
    assert view.shape == (10, 10, 10)
    assert 0.3 < float(view[2:-2, 2:-2, 2:-2].mean()) < 0.7
    assert float(view[2:-2, 2:-2, 2:-2].std()) < float(vol.array.std()) / 2  # averaged, not point-sampled


def test_atlas_posterior_names_the_nearest_artery() -> None:
    rows = [{"location": loc, "dx": float(10 * i), "dy": 0.0, "dz": 0.0} for i, loc in enumerate(LOCATION_COLS)
            for _ in range(3)]
    atlas = LocationAtlas(pl.DataFrame(rows), sigma_mm=3.0)
    post = atlas.posterior(np.array([[40.0, 1.0, 0.0], [1e4, 0.0, 0.0]]))
    assert np.allclose(post.sum(axis=1), 1.0)
    assert int(np.argmax(post[0])) == 4 and post[0, 4] > 0.9
    assert np.allclose(post[1], 1.0 / len(LOCATION_COLS))  # far from everything: no opinion


def test_finder_box_holds_every_training_aneurysm_and_fallback_answers(prepared: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    _, pre = prepared
    run = tmp_path / "run"
    cfg = RegionConfig(box_mm=(96.0, 80.0, 80.0),
                       finder=FinderConfig(view_shape=(32, 32, 32), view_spacing_mm=7.0, epochs=25, batch_size=4,
                                           channels=(4, 8, 16), shift_mm=14.0))
    metrics = train_region_finder(pre, run, cfg)
    assert metrics["n_train"] == 8 and metrics["train"]["center_error_mm_median"] < 30.0
    fitted = json.loads((run / "region" / "region.json").read_text())
    bundle = load_region(run)
    assert bundle.locator.model is not None and bundle.atlas is not None
    from rsna_aneurysm.io.nifti import read_volume

    manifest = pl.read_parquet(pre / "manifest.parquet").filter(pl.col("status") == "ok")
    locs = pl.read_parquet(pre / "localizers.parquet").filter(pl.col("status") == "ok")
    assert locs.height > 0
    checked = 0
    for r in manifest.iter_rows(named=True):
        vol = read_volume(pre / r["volume"], mmap=False)
        mask = np.asarray(read_volume(pre / r["mask"], mmap=False).array)
        box = bundle.locator.locate(vol, mask)
        assert box.source in ("finder", "fallback")
        assert np.all(box.size_mm >= np.asarray(fitted["box_mm"]) - 1e-6)
        grid = box.grid(2.0)
        pts = locs.filter(pl.col(ID_COL) == r[ID_COL]).select("world_x", "world_y", "world_z").to_numpy()
        if len(pts):
            assert grid.contains(pts).all(), (r[ID_COL], box, pts)
            checked += len(pts)
        # The classical fallback (no finder) still answers a box around the head's arteries.
        fb = RegionLocator(bundle.cfg, None).locate(vol, mask)
        assert fb.source == "fallback" and "no region finder" in fb.reason
        assert np.all(np.isfinite(fb.center))
    assert checked == locs.height
    # An unsure finder hands over to the fallback, with the reason.
    unsure = RegionLocator(RegionConfig(max_spread_mm=0.0, finder=bundle.cfg.finder), bundle.locator.model)
    vol = read_volume(pre / manifest.row(0, named=True)["volume"], mmap=False)
    box = unsure.locate(vol, None)
    assert box.source == "fallback" and "unsure" in box.reason


def test_region_cli_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["region", "targets", "--pre", str(tmp_path)]) == 1
    assert "manifest.parquet" in capsys.readouterr().err
    (tmp_path / "manifest.parquet").write_bytes(b"")
    assert main(["region", "train", "--pre", str(tmp_path), "--weights", str(tmp_path / "run")]) == 1
    assert "region targets" in capsys.readouterr().err


def test_finder_checkpoint_loads_with_weights_only(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    _, pre = prepared
    cfg = RegionConfig(finder=FinderConfig(view_shape=(16, 16, 16), view_spacing_mm=14.0, epochs=1,
                                           channels=(2, 2, 4), batch_size=4))
    train_region_finder(pre, tmp_path, cfg)
    state = torch.load(tmp_path / "region" / "finder.pt", weights_only=True)
    assert state["kind"] == "region_finder" and "state_dict" in state


def test_a_failing_finder_hands_over_to_the_head_geometry_box() -> None:
    from rsna_aneurysm.region.finder import RegionFinder

    class Broken(RegionLocator):
        def run_finder(self, view, grid):
            raise RuntimeError("out of memory")

    vol = _volume(shape=(40, 40, 40), spacing=(4.0, 4.0, 4.0), origin=(-80.0, -80.0, -80.0))
    cfg = RegionConfig(box_mm=(64.0, 64.0, 64.0), max_box_mm=(64.0, 64.0, 64.0))
    stage = RegionStage(Broken(cfg, RegionFinder((2, 2, 2))), None, cfg, Path("."))
    box = stage.locate(vol, None)
    assert box.source == "fallback" and "finder failed: RuntimeError" in box.reason
    crop, grid = crop_region(vol, box)
    assert grid.shape == (16, 16, 16) and crop.shape == (16, 16, 16)
