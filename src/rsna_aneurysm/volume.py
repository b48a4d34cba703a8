"""The one volume type that flows through the kit: voxels plus geometry in LPS world coordinates.

Conventions (the same as SimpleITK, so conversion is free of transposes):
- ``array`` is indexed ``[k, j, i]`` (slice, row, column);
- ``spacing``, ``origin`` and the columns of ``direction`` are given in ``(i, j, k)`` order;
- a voxel index ``(i, j, k)`` sits at world ``origin + direction @ (spacing * (i, j, k))``, in millimetres, in
  DICOM's patient frame (LPS: x to the patient's left, y to posterior, z to superior).

For a DICOM series, ``i`` is the pixel column (localizer ``x``), ``j`` the pixel row (localizer ``y``) and ``k`` the
slice, sorted along the slice normal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

# LPS -> RAS flips x and y; NIfTI affines are RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Volume:
    """Voxels with spacing, origin and direction (LPS), plus per-slice provenance and flags in ``meta``.

    ``meta`` keys used by the kit: ``sop_uids`` (one SOPInstanceUID per slice ``k``), ``frames`` (frame index per
    slice, or None for single-frame files), ``series_uid``, ``spacing_guessed`` (bool), ``warnings`` (list of str).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if self.array.ndim != 3:
            raise ValueError(f"Volume needs a 3D array, got shape {self.array.shape}")
        if min(self.spacing) <= 0:
            raise ValueError(f"Volume spacing must be positive, got {self.spacing}")

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Size along (i, j, k), the order of spacing and origin."""
        k, j, i = self.array.shape
        return (i, j, k)

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix taking homogeneous (i, j, k, 1) to LPS (x, y, z, 1)."""
        a = np.eye(4)
        a[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        a[:3, 3] = self.origin
        return a

    @property
    def ras_affine(self) -> np.ndarray:
        """4x4 NIfTI affine: (i, j, k, 1) to RAS."""
        a = self.affine
        a[:3] = np.hstack([LPS_TO_RAS @ a[:3, :3], (LPS_TO_RAS @ a[:3, 3])[:, None]])
        return a

    def index_to_world(self, ijk: np.ndarray | list | tuple) -> np.ndarray:
        """Continuous voxel indices (..., 3) in (i, j, k) order to LPS millimetres (..., 3)."""
        p = np.asarray(ijk, dtype=np.float64)
        return p @ (self.direction * np.asarray(self.spacing)[None, :]).T + np.asarray(self.origin)

    def world_to_index(self, xyz: np.ndarray | list | tuple) -> np.ndarray:
        """LPS millimetres (..., 3) to continuous voxel indices (..., 3) in (i, j, k) order."""
        p = np.asarray(xyz, dtype=np.float64) - np.asarray(self.origin)
        m = self.direction * np.asarray(self.spacing)[None, :]
        return np.linalg.solve(m, p.reshape(-1, 3).T).T.reshape(p.shape)

    def with_array(self, array: np.ndarray, **changes: Any) -> Volume:
        """Same geometry and meta with new voxels (and optionally other fields changed)."""
        return replace(self, array=array, meta=dict(self.meta), **changes)

    def to_sitk(self):
        """As a SimpleITK image (shares no memory)."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(self.direction.ravel()))
        return img

    @classmethod
    def from_sitk(cls, image, modality: str | None = None, meta: dict[str, Any] | None = None) -> Volume:
        import SimpleITK as sitk

        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=np.asarray(image.GetDirection()).reshape(3, 3),
            modality=modality,
            meta=dict(meta or {}),
        )

    def orientation_code(self) -> str:
        """Three letters naming where each of i, j, k points to (e.g. 'LPS' for canonical axial DICOM)."""
        letters = (("L", "R"), ("P", "A"), ("S", "I"))
        code = ""
        for axis in range(3):
            v = self.direction[:, axis]
            dom = int(np.argmax(np.abs(v)))
            code += letters[dom][0 if v[dom] > 0 else 1]
        return code
