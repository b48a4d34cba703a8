from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from rsna_aneurysm.cli import main as cli_main
from rsna_aneurysm.constants import ID_COL
from rsna_aneurysm.data.synth import generate_dataset
from rsna_aneurysm.io.nifti import read_volume
from rsna_aneurysm.preprocess.dataset import preprocess_dataset
from rsna_aneurysm.preprocess.pipeline import PreprocessConfig


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, n_series=8, preset="tiny", seed=5, n_test=2)
    return out


def test_preprocess_dataset_maps_localizers_and_resumes(tiny_data, tmp_path):
    # Break one series (empty folder): it is reported, the rest goes on.
    train = pl.read_csv(tiny_data / "train.csv")
    broken = train[ID_COL][0]
    series = tiny_data / "series" / broken
    moved = tmp_path / "moved"
    series.rename(moved)
    series.mkdir()
    try:
        cfg = PreprocessConfig(spacing=(2.0, 2.0, 2.0))
        out = tmp_path / "pre"
        manifest = preprocess_dataset(tiny_data, out, cfg, workers=2, progress=False)
    finally:
        series.rmdir()
        moved.rename(series)
    assert len(manifest) == len(train)
    bad = manifest.filter(pl.col(ID_COL) == broken)
    assert bad["status"][0] == "error" and "empty" in bad["error"][0]
    ok = manifest.filter(pl.col("status") == "ok")
    assert len(ok) == len(train) - 1
    truth = json.loads((tiny_data / "synth_truth.json").read_text())
    locs = pl.read_parquet(out / "localizers.parquet")
    checked = 0
    for r in locs.filter(pl.col("status") == "ok").iter_rows(named=True):
        vol = read_volume(out / "volumes" / f"{r[ID_COL]}.nii.gz")
        assert np.allclose(vol.direction, np.eye(3)) and vol.spacing == (2.0, 2.0, 2.0)
        centres = [a["center_lps"] for a in truth[r[ID_COL]]["aneurysms"] if a["location"] == r["location"]]
        world = vol.index_to_world([r["i"], r["j"], r["k"]])
        src_spacing = manifest.filter(pl.col(ID_COL) == r[ID_COL])["source_spacing_ijk"][0].to_list()
        assert min(np.linalg.norm(world - np.asarray(c)) for c in centres) <= 0.5 * np.linalg.norm(src_spacing) + 1e-6
        checked += 1
    assert checked > 0
    for r in ok.iter_rows(named=True):
        assert (out / r["volume"]).exists() and (out / r["mask"]).exists()
        assert tuple(r["shape_kji"]) == read_volume(out / r["volume"]).array.shape
    assert (out / "config.json").exists() and (out / "train.csv").exists()
    # A rerun skips everything already done (only the previously failed series, now repaired, is redone).
    stamp = {p: p.stat().st_mtime_ns for p in (out / "volumes").iterdir()}
    again = preprocess_dataset(tiny_data, out, cfg, workers=1, progress=False)
    assert (again["status"] == "ok").all()
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())


def test_preprocess_cli_with_overrides(tiny_data, tmp_path):
    out = tmp_path / "pre"
    rc = cli_main(["preprocess", "--data", str(tiny_data / "test"), "--out", str(out), "--spacing", "3,3,3",
                   "--mask", "brain"])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["spacing"] == [3.0, 3.0, 3.0] and cfg["mask"] == "brain"
    manifest = pl.read_parquet(out / "manifest.parquet")
    assert len(manifest) == 2 and (manifest["status"] == "ok").all()
    assert cli_main(["preprocess", "--data", str(tiny_data), "--out", str(out), "--bogus", "1"]) == 2
