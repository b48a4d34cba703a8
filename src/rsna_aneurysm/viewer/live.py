"""Running the predictor of a weights folder on the series shown in the viewer, with progress callbacks.

The series is already preprocessed (the viewer's volume), so this is the scan-level path of ``rsna-aneurysm oof``:
the volume and mask are resampled to the model's training spacing, cropped to the head, run through every fold's
model (and the mirrored pass when the predictor's settings ask for it) and aggregated to the 14 probabilities.
The heatmap and the row are written to a live prediction folder the viewer reads like any ``--pred`` folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import LABEL_COLS
from ..volume import Volume
from .data import SeriesData
from .predictions import write_live_prediction

Progress = Callable[[float, str], None]


@dataclass
class LiveResult:
    """The 14 probabilities (label order), the threshold decisions (None without thresholds), the heatmap file."""

    uid: str
    probs: dict[str, float]
    decisions: dict[str, int] | None
    heatmap_path: Path | None
    seconds: float
    n_windows: int
    n_passes: int


def load_predictor(weights_dir: str | Path) -> Any:
    """``Predictor.from_weights`` with the share-folder clean-up off (local series only)."""
    from ..infer.predictor import Predictor

    predictor = Predictor.from_weights(weights_dir)
    predictor.cfg.share_root = None
    return predictor


def _to_model_grid(vol: Volume, mask: Volume | None, spacing_mm: float) -> tuple[Volume, Volume | None]:
    """Volume (linear) and mask (nearest) on an isotropic grid at the model's spacing, unchanged when already so."""
    if np.allclose(vol.spacing, spacing_mm, atol=1e-3):
        return vol, mask
    from ..preprocess.geometry import resample

    out = resample(vol, (spacing_mm,) * 3, "linear")
    if mask is not None:
        mask = resample(mask, interpolator="nearest", reference=out, default_value=0, dtype=np.uint8)
    return out, mask


def _window_budget(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Windows of one sliding-window pass before masked windows are skipped (an upper bound for progress)."""
    from ..infer.sliding_window import window_grid

    return len(window_grid(tuple(max(s, r) for s, r in zip(shape, roi)), roi, overlap))


def _counting(model: Any, tick: Callable[[int], None]) -> Any:
    """``model`` behind a wrapper that reports the windows of every forward call (for the progress bar)."""
    import torch

    class Counting(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            # The inferer lays out and casts its batches as the wrapped model wants them.
            self._rsna_channels_last = getattr(model, "_rsna_channels_last", False)
            self._rsna_precision = getattr(model, "_rsna_precision", None)

        def forward(self, x: Any) -> Any:
            out = self.model(x)
            tick(int(x.shape[0]))
            return out

    return Counting()


def run_prediction(predictor: Any, series: SeriesData, out_dir: str | Path,
                   progress: Progress | None = None) -> LiveResult:
    """Predict ``series`` with a loaded-or-not ``Predictor``; write ``out_dir/heatmaps/<uid>.nii.gz`` and the row.

    Exceptions (a weights folder whose models cannot be built, a volume too small...) propagate: the caller shows
    them; unlike the submission path there is no fallback row here, since a made-up row would mislead.
    """
    from ..infer.scan import crop_to_mask, predict_volume
    from ..infer.sliding_window import save_heatmap

    report = progress or (lambda fraction, text: None)
    t0 = time.perf_counter()
    if predictor.models is None:
        report(0.05, f"loading {len(predictor.checkpoints)} fold model(s)")
        predictor.load()
    spacing = float(predictor.spacing_mm)
    report(0.3, f"resampling to {spacing:g} mm and cropping to the head")
    vol = series.volume.with_array(np.asarray(series.volume.array, dtype=np.float32))
    vol, mask = _to_model_grid(vol, series.mask, spacing)
    vol, mask = crop_to_mask(vol, mask, predictor.cfg.crop_margin_mm)
    passes = len(predictor.models) * (2 if predictor.cfg.tta_flip else 1)
    wcfg = predictor.inferer.cfg
    budget = max(passes * _window_budget(vol.array.shape, tuple(wcfg.roi_size), wcfg.overlap), 1)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        report(0.4 + 0.5 * min(done[0] / budget, 1.0), f"sliding windows: {done[0]} run ({passes} pass(es), "
                                                        f"at most {budget})")

    report(0.4, f"sliding windows over {vol.array.shape} voxels: {passes} pass(es)")
    models = [_counting(m, tick) for m in predictor.models]
    heat_grid = vol
    if predictor.region is not None:  # the two-stage pipeline, as the kernel runs it: the heatmap covers the region
        from ..region.infer import predict_two_stage

        two = predict_two_stage(models, vol, None if mask is None else mask.array, predictor.region,
                                predictor.inferer, predictor.cfg.aggregate, predictor.cfg.two_stage,
                                tta=predictor.cfg.tta_flip)
        pred = two.scan
        heat_grid = two.grid.volume(np.zeros(two.grid.shape, dtype=np.float32), like=vol)
    else:
        pred = predict_volume(models, vol.array, None if mask is None else mask.array, predictor.inferer,
                              predictor.cfg.aggregate, tta=predictor.cfg.tta_flip, want_heatmap=True)
    report(0.9, "writing the heatmap and the row")
    out_dir = Path(out_dir)
    heat_path = None
    if pred.heatmap is not None:
        heat_path = out_dir / "heatmaps" / f"{series.uid}.nii.gz"
        save_heatmap(np.clip(pred.heatmap, 0.0, 1.0), heat_grid, str(heat_path))
    probs = {c: float(v) for c, v in zip(LABEL_COLS, np.asarray(pred.probs, dtype=np.float64))}
    write_live_prediction(out_dir, series.uid, probs)
    report(1.0, "done")
    return LiveResult(series.uid, probs, predictor.decisions(list(probs.values())), heat_path,
                      time.perf_counter() - t0, int(pred.n_windows), int(pred.n_passes))
