"""Measurements behind ``bench_infer.py`` and ``bench_pipelines.py`` (beside this file, which they import from their
own folder): the kit's sliding window against MONAI's, and ``predict`` per series.

MONAI is an optional, bench-only dependency (the ``bench`` extra): without it the comparison is skipped and says so.
Both sides get the same model, volume, window, overlap, batch size and blending weights (MONAI is handed the
kit's Gaussian map through ``roi_weight_map``; its own Gaussian differs by about 1e-6 and is reported too).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from rsna_aneurysm.constants import MODALITIES
from rsna_aneurysm.models.sliding_window import (
    SlidingWindowConfig,
    SlidingWindowInferer,
    prepare_model,
    resolve_precision,
    weight_map,
)


def untrained_weights(run_dir: Path, model: str = "unet3d_tiny", kwargs: dict[str, Any] | None = None,
                      patch: int = 64, spacing_mm: float = 1.0, seed: int = 0) -> Path:
    """A one-fold weights folder of a randomly initialised model (timing does not depend on the weights)."""
    from rsna_aneurysm.constants import LABEL_COLS
    from rsna_aneurysm.models import create_model
    from rsna_aneurysm.train.checkpoint import model_payload, save_checkpoint

    torch.manual_seed(seed)
    net = randomize_batchnorm(create_model(model, **(kwargs or {})), seed)
    cfg = {"model": {"name": model, "kwargs": dict(kwargs or {})},
           "cache": {"patch_size": [patch] * 3, "spacing_mm": spacing_mm}}
    payload = model_payload(net, cfg, 0, 0, {}, {"spacing": [spacing_mm] * 3, "mask": "head"})
    save_checkpoint(payload, run_dir / "fold_0" / "best.pt")
    (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    (run_dir / "prevalence.json").write_text(json.dumps({c: 0.1 for c in LABEL_COLS}))
    return run_dir


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give batch-norm layers non-trivial running statistics, so folding them is a real test of equality."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
    return model.eval()


def _best_of(fn, repeat: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def compare_with_monai(model: nn.Module, volume: np.ndarray, cfg: SlidingWindowConfig, repeat: int = 2
                       ) -> dict[str, Any]:
    """Seconds and max abs difference of the blended heatmap, kit vs ``monai.inferers.sliding_window_inference``."""
    model = model.eval()
    fast = prepare_model(model, "cpu")
    inferer = SlidingWindowInferer(cfg)
    roi = tuple(cfg.roi_size)
    warm = np.ascontiguousarray(volume[: roi[0], : roi[1], : roi[2]])
    inferer(fast, warm)
    t_kit, res = _best_of(lambda: inferer(fast, volume), repeat)
    out: dict[str, Any] = {"volume_shape": list(volume.shape), "window": list(roi), "overlap": cfg.overlap,
                           "blend": cfg.blend, "batch_size": inferer.batch_size, "windows": int(res.n_windows_total),
                           "kit_s": round(t_kit, 3), "threads": torch.get_num_threads()}
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        out["monai"] = "skipped: MONAI is not installed (pip install 'rsna-aneurysm[bench]')"
        return out
    x = torch.from_numpy(np.ascontiguousarray(volume))[None, None]
    w = weight_map(roi, cfg.blend, cfg.sigma_scale) if cfg.blend == "gaussian" else None

    def monai(net: nn.Module, own_weights: bool = False) -> np.ndarray:
        kw = {} if own_weights or w is None else {"roi_weight_map": w}
        with torch.inference_mode():
            y = sliding_window_inference(x, roi, inferer.batch_size, lambda a: torch.sigmoid(net(a)["heatmap"]),
                                         overlap=cfg.overlap, mode=cfg.blend, sigma_scale=cfg.sigma_scale, **kw)
        return y[0, 0].numpy()

    monai(model)  # warm-up
    t_monai, ref = _best_of(lambda: monai(model), repeat)
    out["monai_s"] = round(t_monai, 3)
    out["max_abs_diff"] = float(np.abs(ref - res.heatmap).max())
    out["speedup"] = round(t_monai / t_kit, 2)
    if cfg.blend == "gaussian":
        out["max_abs_diff_monai_own_gaussian"] = float(np.abs(monai(model, own_weights=True) - res.heatmap).max())
    # How much of the gain is the prepared model (same model given to MONAI's loop).
    t_monai_prepared, _ = _best_of(lambda: monai(fast), 1)
    out["monai_prepared_model_s"] = round(t_monai_prepared, 3)
    out["equal"] = out["max_abs_diff"] <= 1e-4
    out["faster_1_3x"] = out["speedup"] >= 1.3
    # The kit's default on CPUs with native bfloat16 (not part of the equality check).
    if resolve_precision("auto", torch.device("cpu")) == "bf16":
        fast_bf16 = prepare_model(model, "cpu", precision="bf16")
        inferer(fast_bf16, warm)
        t_bf16, res_bf16 = _best_of(lambda: inferer(fast_bf16, volume), repeat)
        out["kit_bf16_s"] = round(t_bf16, 3)
        out["max_abs_diff_bf16"] = float(np.abs(ref - res_bf16.heatmap).max())
    return out


def predict_timing(weights: Path, modalities: tuple[str, ...] = MODALITIES, preset: str = "full",
                   overrides: dict[str, Any] | None = None, seed: int = 0, keep: Path | None = None
                   ) -> list[dict[str, Any]]:
    """Seconds of ``Predictor.predict`` per synthetic series of each modality, split into its stages."""
    from rsna_aneurysm.data.synth import SeriesSpec, make_series
    from rsna_aneurysm.infer.predictor import Predictor

    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="rsna_bench_"))
    rows = []
    try:
        # No budget planner here: every series is timed at the configured level.
        predictor = Predictor.from_weights(weights, overrides={"share_root": None, "use_budget": False,
                                                               **(overrides or {})})
        predictor.load()
        for n, modality in enumerate(modalities):
            folder = root / modality.replace(" ", "_")
            if not folder.is_dir():
                make_series(folder, SeriesSpec(modality=modality, preset=preset, test_tags_only=True,
                                               seed=seed + n), keep_volume=False)
            t0 = time.perf_counter()
            predictor.predict(str(folder))
            wall = time.perf_counter() - t0
            if predictor.n_fallback:
                raise RuntimeError(f"{modality}: predict fell back: {predictor.fallback_reasons[-1][1]}")
            rec = predictor.records[-1]
            rows.append({"modality": modality, "wall_s": round(wall, 2),
                         **{k: round(v, 2) for k, v in rec.items() if k.endswith("_s")},
                         "windows": rec["windows"], "passes": rec["passes"], "shape_kji": rec["shape_kji"],
                         "level": rec["level"]})
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows
