"""Head and (crude) brain masks by thresholding and morphology.

Learned skull strippers (SynthStrip and the like) need model weights the kit cannot ship; see the README for how
to plug one in through :func:`register_mask_fn`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..volume import Volume

_CUSTOM: dict[str, Callable[[Volume], np.ndarray]] = {}


def register_mask_fn(name: str, fn: Callable[[Volume], np.ndarray]) -> None:
    """Make ``fn(volume) -> uint8 mask`` (same array shape) available as ``PreprocessConfig.mask = name``."""
    _CUSTOM[name] = fn


def _largest_component(img: sitk.Image) -> sitk.Image:
    cc = sitk.ConnectedComponent(img)
    relabeled = sitk.RelabelComponent(cc, sortByObjectSize=True)
    return sitk.Cast(relabeled == 1, sitk.sitkUInt8)


def _closing(arr: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing by ``radius`` steps of a 6-connected structure (padded, so the borders do not erode)."""
    padded = np.pad(arr, radius)
    closed = ndimage.binary_closing(padded, structure=ndimage.generate_binary_structure(3, 1), iterations=radius)
    return closed[radius:-radius, radius:-radius, radius:-radius]


def _radius(vol: Volume, mm: float) -> list[int]:
    return [max(1, int(round(mm / s))) for s in vol.spacing]


def _is_ct(vol: Volume) -> bool:
    return vol.modality == "CTA" or vol.meta.get("dicom_modality") == "CT"


def head_bounds(vol: Volume, margin_mm: float = 10.0, step_mm: float = 4.0, ct_threshold: float = -500.0,
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """World box ``(lo_xyz, hi_xyz)`` around the head (largest bright component on a strided ~4 mm subsample),
    widened by ``margin_mm``; ``None`` when nothing stands out. Costs milliseconds; it lets resampling and every
    later stage skip the air around the head."""
    step = [max(1, int(round(step_mm / s))) for s in vol.spacing]  # (i, j, k)
    sub = np.asarray(vol.array[:: step[2], :: step[1], :: step[0]], dtype=np.float32)
    if sub.size == 0:
        return None
    if _is_ct(vol):
        fg = sub > ct_threshold
    else:
        hi = float(np.percentile(sub, 99.0))
        fg = sub > 0.1 * hi if hi > 0 else sub > hi
    labels, n = ndimage.label(fg)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    k, j, i = np.nonzero(labels == int(np.argmax(sizes)) + 1)
    idx = np.c_[i * step[0], j * step[1], k * step[2]].astype(np.float64)
    lo_i, hi_i = idx.min(0) - np.asarray(step), idx.max(0) + np.asarray(step)  # a subsample step of slack
    corners = np.array([[a, b, c] for a in (lo_i[0], hi_i[0]) for b in (lo_i[1], hi_i[1]) for c in (lo_i[2], hi_i[2])])
    world = vol.index_to_world(corners)
    return world.min(0) - margin_mm, world.max(0) + margin_mm


def head_mask(vol: Volume, ct_threshold: float = -500.0, closing_mm: float = 3.0, work_mm: float = 2.0) -> np.ndarray:
    """Everything that is head, not air: threshold (HU for CT, Otsu for MR), largest component, holes filled.

    Computed on a grid of about ``work_mm`` voxels (a head outline needs no more) and brought back to ``vol``'s
    grid by nearest-neighbour sampling: 10-30x cheaper than working at 1 mm.
    """
    shrink = [max(1, int(round(work_mm / s))) for s in vol.spacing]
    if max(shrink) > 1:
        full = vol.to_sitk()
        small = sitk.BinShrink(full, shrink)
        coarse = Volume.from_sitk(small, modality=vol.modality, meta={"dicom_modality": vol.meta.get("dicom_modality")})
        m = head_mask(coarse, ct_threshold, closing_mm, work_mm=0.0)
        # BinShrink keeps the direction and averages blocks of `shrink` voxels: fine voxel n lies in block n // s.
        idx = [np.minimum(np.arange(n) // s, c - 1) for n, s, c in zip(vol.shape_ijk, shrink, coarse.shape_ijk)]
        return m[np.ix_(idx[2], idx[1], idx[0])]
    img = vol.to_sitk()
    if _is_ct(vol):
        fg = sitk.Cast(img > ct_threshold, sitk.sitkUInt8)
    else:
        smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(img, sitk.sitkFloat32), 1.5)
        # Otsu over all voxels puts the cut between air and tissue; halve it so dark tissue (bone, CSF on T1)
        # stays inside the head.
        otsu = sitk.OtsuThresholdImageFilter()
        otsu.SetInsideValue(0)
        otsu.SetOutsideValue(1)
        otsu.Execute(smooth)
        fg = sitk.Cast(smooth > 0.5 * otsu.GetThreshold(), sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(fg).any():
        return np.zeros(vol.array.shape, dtype=np.uint8)
    fg = _largest_component(fg)
    arr = _closing(sitk.GetArrayFromImage(fg).astype(bool), max(_radius(vol, closing_mm)))
    arr = ndimage.binary_fill_holes(arr)
    # Fill within each slice too (one call, in-plane connectivity): cavities open to the top or bottom of the field
    # of view survive a 3D fill.
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    arr = ndimage.binary_fill_holes(arr, structure=in_plane)
    return arr.astype(np.uint8)


def brain_mask(vol: Volume, head: np.ndarray | None = None, erosion_mm: float = 8.0,
               ct_range: tuple[float, float] = (0.0, 100.0)) -> np.ndarray:
    """A crude brain mask: the head mask eroded past scalp and skull; for CT also restricted to brain HU."""
    head = head_mask(vol) if head is None else head
    img = sitk.GetImageFromArray(head.astype(np.uint8))
    img.SetSpacing(vol.spacing)
    eroded = sitk.BinaryErode(img, _radius(vol, erosion_mm))
    arr = sitk.GetArrayFromImage(eroded).astype(bool)
    if _is_ct(vol):
        arr &= (vol.array >= ct_range[0]) & (vol.array <= ct_range[1])
    if not arr.any():
        return arr.astype(np.uint8)
    out = sitk.GetImageFromArray(arr.astype(np.uint8))
    out = _largest_component(out)
    out = sitk.BinaryMorphologicalClosing(out, _radius(vol, 3.0))
    return sitk.GetArrayFromImage(sitk.BinaryFillhole(out)).astype(np.uint8)


def compute_mask(vol: Volume, kind: str) -> np.ndarray | None:
    """Mask of ``kind`` ("none", "head", "brain" or a registered name) for ``vol``."""
    if kind == "none":
        return None
    if kind == "head":
        return head_mask(vol)
    if kind == "brain":
        return brain_mask(vol)
    if kind in _CUSTOM:
        m = np.asarray(_CUSTOM[kind](vol)).astype(np.uint8)
        if m.shape != vol.array.shape:
            raise ValueError(f"mask function {kind!r} returned shape {m.shape}, expected {vol.array.shape}")
        return m
    raise ValueError(f"unknown mask kind {kind!r}; choose none, head, brain or one of {sorted(_CUSTOM)}")
