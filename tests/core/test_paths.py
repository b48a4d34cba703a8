"""No series UID, from a table or a DICOM header, can make the kit write outside the folder it writes into."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rsna_aneurysm import layout
from rsna_aneurysm.infer.predictor import heatmap_name
from rsna_aneurysm.layout import DataDir, PreDir, UnsafeUIDError, check_uid

HOSTILE = ["../../x", "..", "../etc/passwd", "/abs/path", "a/b", "a\\b", "", ".hidden", "x\x00y", "9" * 129,
           "1.2..3", "uid with space"]
REAL = ["1.2.826.0.1.3680043.8.498.10004044428023505108375152878107656647", "series_0001", "a-b_c.1"]


@pytest.mark.parametrize("uid", HOSTILE)
def test_hostile_uid_is_refused_with_its_source(uid, tmp_path):
    with pytest.raises(UnsafeUIDError, match="train.csv.*not a safe file name"):
        check_uid(uid, tmp_path / "train.csv")


@pytest.mark.parametrize("uid", REAL)
def test_real_uids_pass_unchanged(uid):
    assert check_uid(uid) == uid


@pytest.mark.parametrize("uid", ["../../x", "/abs", "a/b"])
def test_every_path_builder_refuses(uid, tmp_path):
    builders = [lambda: DataDir(tmp_path).series(uid), lambda: DataDir(tmp_path).segmentation(uid),
                lambda: layout.TestDir(tmp_path).series(uid), lambda: PreDir(tmp_path).sidecar(uid),
                lambda: PreDir.volume_rel(uid), lambda: PreDir.mask_rel(uid), lambda: PreDir.segmentation_rel(uid)]
    for build in builders:
        with pytest.raises(UnsafeUIDError):
            build()


def test_path_builders_stay_inside_their_folder(tmp_path):
    uid = REAL[0]
    for p in (DataDir(tmp_path).series(uid), DataDir(tmp_path).segmentation(uid), PreDir(tmp_path).sidecar(uid),
              tmp_path / PreDir.volume_rel(uid)):
        assert p.resolve().is_relative_to(tmp_path.resolve())


def test_heatmap_of_a_hostile_header_uid_is_named_after_the_folder(tmp_path, caplog):
    vol = SimpleNamespace(meta={"series_uid": "../../../tmp/evil"})
    assert heatmap_name(vol, tmp_path / "1.2.3") == "1.2.3.nii.gz"
    assert "not a safe file name" in caplog.text
    assert heatmap_name(SimpleNamespace(meta={"series_uid": "1.2.4"}), tmp_path / "1.2.3") == "1.2.4.nii.gz"
    with pytest.raises(UnsafeUIDError):  # both hostile: refuse rather than write anywhere
        heatmap_name(vol, tmp_path / "..")
