from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import polars as pl
import pytest

from rsna_aneurysm.cli import main as cli_main
from rsna_aneurysm.constants import ID_COL, SEG_LABELS
from rsna_aneurysm.data.synth import generate_dataset
from rsna_aneurysm.io.nifti import read_volume, write_volume
from rsna_aneurysm.layout import PreDir
from rsna_aneurysm.preprocess.dataset import preprocess_dataset
from rsna_aneurysm.preprocess.nnunet_export import NnunetExportError, export_nnunet_raw
from rsna_aneurysm.preprocess.pipeline import PreprocessConfig


@pytest.fixture(scope="module")
def pre(tmp_path_factory):
    data = tmp_path_factory.mktemp("synth")
    generate_dataset(data, n_series=6, preset="tiny", seed=3, n_test=0)
    out = tmp_path_factory.mktemp("pre")
    manifest = preprocess_dataset(data, out, PreprocessConfig(spacing=(2.0, 2.0, 2.0)), workers=2, progress=False)
    # The tiny set has one segmented series; give a second ok series labels on its own grid (painted from its
    # intensities), so the export has two cases to number, and leave the others without.
    ok = manifest.filter(pl.col("status") == "ok")
    extra = ok.filter(pl.col("segmentation").is_null())[ID_COL][-1]
    vol = read_volume(out / PreDir.volume_rel(extra), mmap=False)
    labels = np.digitize(vol.array, [0.3, 0.6]).astype(np.uint8) * 4  # values 0, 4, 8
    write_volume(vol.with_array(labels), out / PreDir.segmentation_rel(extra), dtype=np.uint8)
    manifest = manifest.with_columns(
        pl.when(pl.col(ID_COL) == extra).then(pl.lit(PreDir.segmentation_rel(extra)))
        .otherwise(pl.col("segmentation")).alias("segmentation"))
    manifest.write_parquet(PreDir(out).manifest)
    assert 2 <= len(_segmented(out)) < len(ok)
    return out


def _segmented(pre_root):
    m = pl.read_parquet(PreDir(pre_root).manifest)
    return m.filter((pl.col("status") == "ok") & pl.col("segmentation").is_not_null())


def test_export_writes_nnunet_raw_layout(pre, tmp_path):
    seg = _segmented(pre)
    assert len(seg) >= 1
    folder = export_nnunet_raw(pre, tmp_path / "raw")
    assert folder == tmp_path / "raw" / "Dataset501_RSNAVessels"

    spec = json.loads((folder / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "normalized"}
    assert spec["file_ending"] == ".nii.gz"
    labels = spec["labels"]
    assert labels["background"] == 0 and all(isinstance(v, int) for v in labels.values())
    assert sorted(labels.values()) == list(range(len(SEG_LABELS) + 1))
    assert isinstance(spec["numTraining"], int) and spec["numTraining"] == len(seg)

    cases = pl.read_csv(folder / "cases.csv")
    assert cases[ID_COL].to_list() == seg[ID_COL].to_list()  # manifest order
    ids = cases["case"].to_list()
    assert ids == [f"rsna_{n:04d}" for n in range(1, len(seg) + 1)]
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == sorted(f"{c}_0000.nii.gz" for c in ids)
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == sorted(f"{c}.nii.gz" for c in ids)

    for case, uid in cases.iter_rows():
        img = nib.load(folder / "imagesTr" / f"{case}_0000.nii.gz")
        lab = nib.load(folder / "labelsTr" / f"{case}.nii.gz")
        assert img.shape == lab.shape
        assert np.allclose(img.affine, lab.affine, atol=1e-4)
        data = np.asanyarray(lab.dataobj)
        assert data.dtype == np.uint8
        assert set(np.unique(data).tolist()) <= set(labels.values())
        src = np.asanyarray(nib.load(pre / PreDir.segmentation_rel(uid)).dataobj)
        assert np.array_equal(data, src)

    # A rerun (other options) rewrites the same folder consistently; a stale case file is removed.
    (folder / "labelsTr" / "rsna_9999.nii.gz").write_bytes(b"stale")
    again = export_nnunet_raw(pre, tmp_path / "raw", link=True)
    assert again == folder
    assert json.loads((folder / "dataset.json").read_text()) == spec
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == sorted(f"{c}.nii.gz" for c in ids)
    assert all((folder / "imagesTr" / f"{c}_0000.nii.gz").is_symlink() for c in ids)


def test_cli_export_and_bad_dataset_id(pre, tmp_path, capsys):
    assert cli_main(["nnunet-export", "--pre", str(pre), "--out", str(tmp_path), "--dataset-id", "7",
                     "--name", "Vessels"]) == 0
    assert (tmp_path / "Dataset007_Vessels" / "dataset.json").is_file()
    capsys.readouterr()
    assert cli_main(["nnunet-export", "--pre", str(pre), "--out", str(tmp_path), "--dataset-id", "1000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1..999" in err[0]
    assert cli_main(["nnunet-export", "--pre", str(pre), "--out", str(tmp_path), "--name", "a/b"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="1..999"):
        export_nnunet_raw(pre, tmp_path, dataset_id=0)


def _copy_pre(pre, dst):
    shutil.copytree(pre, dst)
    return dst


def test_no_segmentation_is_refused(pre, tmp_path, capsys):
    copy = _copy_pre(pre, tmp_path / "pre")
    m = pl.read_parquet(PreDir(copy).manifest).with_columns(pl.lit(None, pl.Utf8).alias("segmentation"))
    m.write_parquet(PreDir(copy).manifest)
    with pytest.raises(NnunetExportError, match="no ok series has a vessel segmentation"):
        export_nnunet_raw(copy, tmp_path / "raw")
    assert cli_main(["nnunet-export", "--pre", str(copy), "--out", str(tmp_path / "raw")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_wrong_label_geometry_or_values_names_the_series(pre, tmp_path):
    copy = _copy_pre(pre, tmp_path / "pre")
    uid = _segmented(copy)[ID_COL][0]
    path = copy / PreDir.segmentation_rel(uid)
    lab = read_volume(path, mmap=False)

    shifted = lab.with_array(lab.array.copy(), origin=tuple(np.asarray(lab.origin) + 0.5))
    write_volume(shifted, path, dtype=np.uint8)
    with pytest.raises(NnunetExportError, match=f"series {uid}: .*origin"):
        export_nnunet_raw(copy, tmp_path / "raw")

    cropped = lab.with_array(np.ascontiguousarray(lab.array[1:]))
    write_volume(cropped, path, dtype=np.uint8)
    with pytest.raises(NnunetExportError, match=f"series {uid}: .*shape"):
        export_nnunet_raw(copy, tmp_path / "raw")

    bad = lab.array.copy()
    bad.flat[0] = max(SEG_LABELS) + 1
    write_volume(lab.with_array(bad), path, dtype=np.uint8)
    with pytest.raises(NnunetExportError, match=f"series {uid}: .*{max(SEG_LABELS) + 1}"):
        export_nnunet_raw(copy, tmp_path / "raw")
    assert not (tmp_path / "raw" / "Dataset501_RSNAVessels" / "dataset.json").exists()
