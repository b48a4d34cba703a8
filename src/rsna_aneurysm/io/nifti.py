"""NIfTI read/write for :class:`~rsna_aneurysm.volume.Volume` through nibabel, with correct affines.

NIfTI stores a RAS affine; the kit works in LPS. Writes are atomic (temporary file, then rename), so an
interrupted run never leaves a half-written volume that looks complete.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ..volume import LPS_TO_RAS, Volume
from .atomic import atomic_path


def write_volume(vol: Volume, path: str | Path, dtype: np.dtype | str | None = None) -> Path:
    """Write ``vol`` to ``path`` (``.nii`` or ``.nii.gz``) atomically; returns the path."""
    path = Path(path)
    data = vol.array if dtype is None else vol.array.astype(dtype, copy=False)
    # Volume arrays are [k, j, i]; NIfTI data is indexed [i, j, k].
    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), vol.ras_affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(vol.ras_affine, code=1)
    img.header.set_sform(vol.ras_affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


def read_volume(path: str | Path, modality: str | None = None, mmap: bool = True) -> Volume:
    """Read a NIfTI file into a Volume (LPS geometry; shear-free affines only)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such NIfTI file")
    try:
        img = nib.load(str(path), mmap=mmap)
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises several types for corrupt files
        raise ValueError(f"{path}: not a readable NIfTI file ({e})") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D image, got shape {data.shape}")
    affine = LPS_TO_RAS @ img.affine[:3, :4]  # RAS -> LPS, the flip is its own inverse
    m = affine[:, :3]
    spacing = np.linalg.norm(m, axis=0)
    direction = m / spacing[None, :]
    return Volume(
        array=np.ascontiguousarray(data.transpose(2, 1, 0)),
        spacing=tuple(spacing),
        origin=tuple(affine[:, 3]),
        direction=direction,
        modality=modality,
        meta={"source": str(path)},
    )
