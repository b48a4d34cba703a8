"""Modality-aware intensity normalisation and N4 bias-field correction."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..volume import Volume


def normalize(vol: Volume, ct_window: tuple[float, float] = (-100.0, 700.0),
              mr_percentiles: tuple[float, float] = (0.5, 99.8), mask: np.ndarray | None = None) -> Volume:
    """Map intensities to roughly [0, 1] (clipped): a fixed HU window for CTA, robust percentiles for MR.

    CT numbers are calibrated, so one window fits all series; MR intensities are arbitrary per scanner and
    series, so they are scaled by percentiles taken inside the head ``mask`` (all voxels when absent).
    """
    a = vol.array.astype(np.float32, copy=False)
    if vol.modality == "CTA" or vol.meta.get("dicom_modality") == "CT":
        lo, hi = ct_window
    else:
        sample = a[mask > 0] if mask is not None and mask.any() else a.ravel()
        if sample.size > 2_000_000:  # percentiles of a strided sample are as good and much cheaper
            sample = sample[:: sample.size // 2_000_000 + 1]
        lo, hi = (float(v) for v in np.percentile(sample, mr_percentiles))
        if hi <= lo:
            hi = lo + 1.0
    out = (a - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    res = vol.with_array(out)
    res.meta["intensity_range"] = [float(lo), float(hi)]
    return res


def n4_correct(vol: Volume, mask: np.ndarray | None = None, shrink: int = 4, iterations: tuple[int, ...] = (50, 50, 30),
               ) -> Volume:
    """N4 bias-field correction fitted on a ``shrink``-times smaller image, applied at full resolution."""
    img = sitk.Cast(vol.to_sitk(), sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(img)
    offset = float(arr.min())
    if offset <= 0:  # N4 works on a log scale: keep intensities positive
        img = img - offset + 1.0
    if mask is None:
        mask_img = sitk.OtsuThreshold(img, 0, 1, 200)
    else:
        mask_img = sitk.GetImageFromArray(mask.astype(np.uint8))
        mask_img.CopyInformation(img)
    shrink = max(1, int(shrink))
    small = sitk.Shrink(img, [shrink] * 3) if shrink > 1 else img
    small_mask = sitk.Shrink(mask_img, [shrink] * 3) if shrink > 1 else mask_img
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(iterations))
    corrector.Execute(small, small_mask)
    log_bias = corrector.GetLogBiasFieldAsImage(img)
    corrected = img / sitk.Exp(log_bias)
    if offset <= 0:
        corrected = corrected + offset - 1.0
    out = vol.with_array(sitk.GetArrayFromImage(corrected).astype(np.float32))
    out.meta["n4"] = True
    return out
