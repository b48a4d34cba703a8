from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from rsna_aneurysm.io.nifti import read_volume, write_volume
from rsna_aneurysm.volume import Volume


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_world_coordinates_agree_in_nibabel_and_sitk(tmp_path, suffix):
    d = Rotation.from_euler("zyx", [20, -10, 5], degrees=True).as_matrix()
    arr = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    v = Volume(arr, (0.45, 0.5, 1.25), (-90.0, 110.0, -40.0), d)
    path = write_volume(v, tmp_path / f"v{suffix}")
    ijk = np.array([[0, 0, 0], [7, 6, 5], [3.5, 1.25, 2.0]])
    expected = v.index_to_world(ijk)  # LPS
    img = nib.load(str(path))
    ras = nib.affines.apply_affine(img.affine, ijk)
    assert np.allclose(ras * [-1, -1, 1], expected, atol=1e-4)
    s = sitk.ReadImage(str(path))
    assert np.allclose([s.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in ijk], expected, atol=1e-4)
    back = read_volume(path)
    assert np.allclose(back.index_to_world(ijk), expected, atol=1e-4)
    assert np.array_equal(back.array, v.array)
    # nibabel's data [i, j, k] is the transposed kit array [k, j, i].
    assert np.array_equal(np.asarray(img.dataobj)[7, 6, 5], v.array[5, 6, 7])
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary file


def test_read_volume_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(ValueError, match="bad.nii.gz"):
        read_volume(bad)
    with pytest.raises(FileNotFoundError, match="missing.nii"):
        read_volume(tmp_path / "missing.nii")
