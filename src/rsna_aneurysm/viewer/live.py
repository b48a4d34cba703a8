"""Running the scan pipeline of a weights folder on the series shown in the viewer, with progress callbacks.

The series is already preprocessed (the viewer's volume), so this is exactly what ``rsna-aneurysm oof`` and the
kernel run after preprocessing: :meth:`~rsna_aneurysm.infer.pipeline.ScanPipeline.predict` of the predictor built
from the weights folder (its ``predictor.json`` settings, its thresholds). The heatmap and the row are written to a
live prediction folder the viewer reads like any ``--pred`` folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
    """``Predictor.from_weights`` (the kernel's settings and thresholds) with the share-folder clean-up off."""
    from ..infer.predictor import Predictor

    predictor = Predictor.from_weights(weights_dir)
    predictor.cfg.share_root = None
    return predictor


def _window_budget(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Windows of one sliding-window pass before masked windows are skipped (an upper bound for progress)."""
    from ..models.sliding_window import window_grid

    return len(window_grid(tuple(max(s, r) for s, r in zip(shape, roi)), roi, overlap))


def run_prediction(predictor: Any, series: SeriesData, out_dir: str | Path,
                   progress: Progress | None = None) -> LiveResult:
    """Predict ``series`` with a loaded-or-not ``Predictor``; write ``out_dir/heatmaps/<uid>.nii.gz`` and the row.

    Exceptions (a weights folder whose models cannot be built, a volume too small...) propagate: the caller shows
    them; unlike the submission path there is no fallback row here, since a made-up row would mislead.
    """
    from ..models.sliding_window import save_heatmap

    report = progress or (lambda fraction, text: None)
    t0 = time.perf_counter()
    pipeline = predictor.pipeline
    if pipeline.models is None:
        report(0.05, f"loading {pipeline.n_folds} fold model(s)")
        pipeline.load()
    passes = pipeline.n_folds * (2 if pipeline.cfg.tta_flip else 1)
    wcfg = pipeline.inferer.cfg
    shape = series.volume.array.shape
    if not np.allclose(series.volume.spacing, pipeline.spacing_mm, atol=1e-3):
        scale = np.asarray(series.volume.spacing)[::-1] / pipeline.spacing_mm
        shape = tuple(int(np.ceil(s * f)) for s, f in zip(shape, scale))
    budget = max(passes * _window_budget(shape, tuple(wcfg.roi_size), wcfg.overlap), 1)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        report(0.3 + 0.6 * min(done[0] / budget, 1.0), f"sliding windows: {done[0]} run ({passes} pass(es), "
                                                        f"at most {budget})")

    report(0.3, f"{pipeline.name} pipeline at {pipeline.spacing_mm:g} mm: {passes} pass(es)")
    res = pipeline.predict(series.volume, series.mask, want_heatmap=True, on_batch=tick)
    report(0.9, "writing the heatmap and the row")
    out_dir = Path(out_dir)
    heat_path = None
    if res.heatmap is not None:
        heat_path = out_dir / "heatmaps" / f"{series.uid}.nii.gz"
        save_heatmap(res.heatmap.array, res.heatmap, str(heat_path))
    probs = res.row()
    write_live_prediction(out_dir, series.uid, probs)
    report(1.0, "done")
    return LiveResult(series.uid, probs, predictor.decisions(list(probs.values())), heat_path,
                      time.perf_counter() - t0, int(res.n_windows), int(res.n_passes))
