"""Benchmark whole-scan inference on this machine.

1. The kit's sliding window vs MONAI's ``sliding_window_inference`` (bench-only extra) on the same model, volume,
   window, overlap and blending: equal output (max abs difference <= 1e-4) and the speed-up (target >= 1.3x).
2. ``predict`` seconds per synthetic series of each modality (``full`` preset by default), split into reading,
   preprocessing, model and aggregation (target on a 2-core CPU with the default model: <= 15 s per series).

Without ``--weights`` an untrained default model (``unet3d_tiny``, 64^3 windows at 1 mm) stands in: the timing does
not depend on the weights. Example: ``python scripts/bench_infer.py --out bench.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from _bench_infer import compare_with_monai, predict_timing, untrained_weights
from rsna_aneurysm.constants import MODALITIES
from rsna_aneurysm.models.sliding_window import SlidingWindowConfig


def _ints(value: str) -> tuple[int, ...]:
    return tuple(int(v) for v in value.split(","))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", help="weights folder to time (default: an untrained default model)")
    p.add_argument("--shape", type=_ints, default=(128, 160, 128), help="volume (k,j,i) for the comparison")
    p.add_argument("--window", type=int, default=64, help="window edge in voxels")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--blend", choices=("gaussian", "constant"), default="gaussian")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeat", type=int, default=2, help="timed runs per side (the best counts)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--preset", default="full", help="synthetic preset of the predict timing (tiny|small|full)")
    p.add_argument("--modalities", default=",".join(MODALITIES), help="comma list of modalities to time")
    p.add_argument("--tta", choices=("config", "on", "off"), default="config",
                   help="flip TTA in the predict timing (default: the weights' predictor settings)")
    p.add_argument("--skip-compare", action="store_true")
    p.add_argument("--skip-predict", action="store_true")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="rsna_bench_w_") as tmp:
        weights = Path(args.weights) if args.weights else untrained_weights(Path(tmp) / "untrained")
        if not args.skip_compare:
            from rsna_aneurysm.infer.predictor import find_checkpoints
            from rsna_aneurysm.train.checkpoint import build_from_checkpoint, load_checkpoint

            model = build_from_checkpoint(load_checkpoint(next(iter(find_checkpoints(weights).values()))))
            volume = np.random.default_rng(0).random(args.shape, dtype=np.float32)
            cfg = SlidingWindowConfig(roi_size=(args.window,) * 3, overlap=args.overlap, blend=args.blend,
                                      batch_size=args.batch_size, device="cpu")
            cmp = compare_with_monai(model, volume, cfg, args.repeat)
            results["sliding_window"] = cmp
            print("sliding window, kit vs MONAI:")
            print(json.dumps(cmp, indent=2))
        if not args.skip_predict:
            overrides = {} if args.tta == "config" else {"tta_flip": args.tta == "on"}
            rows = predict_timing(weights, tuple(m for m in args.modalities.split(",") if m), args.preset,
                                  overrides)
            results["predict"] = rows
            print(f"\npredict per series ({args.preset} synthetic series, {torch.get_num_threads()} threads):")
            print(f"{'modality':12s} {'total':>7s} {'read':>6s} {'prep':>6s} {'model':>6s} {'aggr':>6s} "
                  f"{'windows':>7s} {'passes':>6s}  shape (k,j,i)")
            for r in rows:
                print(f"{r['modality']:12s} {r['total_s']:7.2f} {r['read_s']:6.2f} {r['preprocess_s']:6.2f} "
                      f"{r['model_s']:6.2f} {r['aggregate_s']:6.2f} {r['windows']:7d} {r['passes']:6d}  "
                      f"{r['shape_kji']}")
            worst = max(r["total_s"] for r in rows)
            print(f"slowest series: {worst:.2f} s (target <= 15 s on a 2-core CPU with the default model)")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
