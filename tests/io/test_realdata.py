"""Real scanner series against dcm2niix, the reference DICOM-to-NIfTI converter (``tests/data/realdata``).

Synthetic series test what the generator's authors thought of; these five (Siemens enhanced multi-frame oblique,
Siemens JPEG 2000 fragmented, Philips classic, GE feet-first, Canon oblique sagittal) test what scanners write.
For each one the loaded volume's corner voxels must sit where dcm2niix puts them (within 0.5 mm, after matching
axes: dcm2niix may flip or permute them) and the voxels must be equal or perfectly correlated (Philips references
apply the vendor's private scale factor).
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest

from rsna_aneurysm.io.dicom import LoadOptions, load_series

nib = pytest.importorskip("nibabel")

DATA = Path(__file__).resolve().parents[1] / "data" / "realdata"
ROWS = list(csv.DictReader(open(DATA / "manifest.csv", newline="")))


def _needs_codecs(row: dict) -> bool:
    return "JPEG" in row["encoding"]


def _ref(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """The reference voxels (i, j, k) and their RAS affine; volume ``ref_volume`` of a 4D reference."""
    img = nib.load(DATA / "ref" / f"{row['uid']}.nii.gz")
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4:
        data = data[..., int(row["ref_volume"] or 0)]
    return np.asarray(data, dtype=np.float64), img.affine


def _corners(shape_ijk) -> np.ndarray:
    return np.array(list(itertools.product(*[(0, n - 1) for n in shape_ijk])), dtype=np.float64)


@pytest.mark.parametrize("fast", [True, False], ids=["fast_headers", "pydicom"])
@pytest.mark.parametrize("row", ROWS, ids=[r["key"] for r in ROWS])
def test_real_series_matches_dcm2niix(row, fast):
    if _needs_codecs(row):
        pytest.importorskip("pylibjpeg")
    vol = load_series(DATA / "series" / row["uid"], LoadOptions(fast_headers=fast))
    assert not vol.meta["spacing_guessed"] and not vol.meta["orientation_guessed"]
    ref, ref_affine = _ref(row)
    assert vol.array.shape == (int(row["n_frames"]), int(row["rows"]), int(row["cols"]))

    # Geometry: every corner voxel of ours lands on a corner voxel of the reference, in RAS millimetres.
    ours = _corners(vol.shape_ijk) @ vol.ras_affine[:3, :3].T + vol.ras_affine[:3, 3]
    theirs = _corners(ref.shape) @ ref_affine[:3, :3].T + ref_affine[:3, 3]
    dist = np.linalg.norm(ours[:, None, :] - theirs[None, :, :], axis=-1).min(axis=1)
    assert dist.max() < 0.5, f"corner off by {dist.max():.3f} mm"

    # Axis matching: our voxel index -> reference voxel index is a signed permutation plus a shift.
    m = np.linalg.inv(ref_affine) @ vol.ras_affine
    perm = np.round(m[:3, :3])
    assert np.allclose(m[:3, :3], perm, atol=0.05), m
    assert sorted(np.abs(perm).sum(axis=0)) == [1, 1, 1] and sorted(np.abs(perm).sum(axis=1)) == [1, 1, 1]
    ours_ijk = np.transpose(np.asarray(vol.array, dtype=np.float64), (2, 1, 0))  # (k, j, i) -> (i, j, k)
    idx = np.indices(ours_ijk.shape).reshape(3, -1)
    ref_idx = np.round(perm @ idx + m[:3, 3:4]).astype(int)
    assert (ref_idx.min(axis=1) >= 0).all() and (ref_idx.max(axis=1) < np.array(ref.shape)).all()
    theirs_vals = ref[tuple(ref_idx)]
    ours_vals = ours_ijk.reshape(-1)

    # Values: equal, or related by a positive linear scale (vendor scale factors).
    if not np.allclose(ours_vals, theirs_vals, atol=1e-3):
        corr = np.corrcoef(ours_vals, theirs_vals)[0, 1]
        assert corr > 0.999, f"voxel correlation {corr:.5f}"
