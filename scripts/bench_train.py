#!/usr/bin/env python
"""Benchmark the training data path: patch cache vs. re-extracting patches from the volumes every epoch.

Measures, in one run: cache building (series per minute, and the no-op rerun), data-only reading of patches
(cache vs. baseline), and training throughput with the model (patches per second) and peak memory for each, the
training runs in fresh subprocesses so each peak is its own. Without --pre it writes a toy preprocessed folder.

    python scripts/bench_train.py --pre demo_out/pre --config unet3d_cpu_demo --out bench_train.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl


def _datasets(pre: str, cache: str, cfg, n: int, seed: int = 0):
    from rsna_aneurysm.data.cache import read_index
    from rsna_aneurysm.data.datasets import PatchDataset, VolumePatchDataset

    index = read_index(cache)
    index = index.sample(min(n, len(index)), seed=seed, shuffle=True) if n else index
    with_mask = cfg.loss.heatmap_weight > 0
    return PatchDataset(cache, index, with_mask), VolumePatchDataset(pre, index, cfg.cache, with_mask)


def run_variant(args: argparse.Namespace) -> None:
    """Child process: training throughput of one data path; prints one JSON line."""
    import torch

    from _bench_train import train_throughput
    from rsna_aneurysm.cli_common import resolve_config
    from rsna_aneurysm.train.config import load_train_config

    cfg = load_train_config(resolve_config(args.config))
    if args.threads:
        torch.set_num_threads(args.threads)
    cached, baseline = _datasets(args.pre, args.cache, cfg, 0)
    ds = cached if args.variant == "cached" else baseline
    print(json.dumps(train_throughput(cfg, ds, steps=args.steps, workers=args.workers)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--pre", help="preprocessed folder (default: a toy one written to a temporary folder)")
    ap.add_argument("--config", default="unet3d_cpu_demo", help="training config (path or shipped name)")
    ap.add_argument("--steps", type=int, default=8, help="timed training steps per variant")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader and cache workers")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the training subprocesses (0: default)")
    ap.add_argument("--read-patches", type=int, default=48, help="patches read in the data-only comparison")
    ap.add_argument("--toy-series", type=int, default=12)
    ap.add_argument("--toy-size", type=int, default=160, help="edge (voxels) of the toy volumes")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--variant", choices=["cached", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        run_variant(args)
        return 0

    from _bench_train import data_epoch_seconds
    from rsna_aneurysm.cli_common import resolve_config
    from rsna_aneurysm.data.cache import build_cache
    from rsna_aneurysm.train.config import load_train_config

    cfg = load_train_config(resolve_config(args.config))
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    pre = args.pre
    if not pre:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "helpers"))
        from toy import write_toy_preprocessed  # the tests' toy folder writer

        s = args.toy_size
        pre = str(write_toy_preprocessed(tmp / "pre", args.toy_series, shape=(s, s, s), seed=0))
    n_series = pl.read_parquet(Path(pre) / "manifest.parquet").filter(pl.col("status") == "ok").height
    cache = str(tmp / "cache")
    res: dict = {"config": args.config, "pre": pre, "series": n_series, "patch_size": list(cfg.cache.patch_size)}

    t0 = time.perf_counter()
    built = build_cache(pre, cache, cfg.cache, workers=args.workers, progress=False)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_cache(pre, cache, cfg.cache, workers=args.workers, progress=False)
    rerun_s = time.perf_counter() - t0
    n_patches = len(built.index)
    res["cache"] = {"seconds": build_s, "series_per_min": 60 * n_series / build_s, "patches": n_patches,
                    "rerun_seconds": rerun_s}

    cached, baseline = _datasets(pre, cache, cfg, args.read_patches)
    c = data_epoch_seconds(cfg, cached, workers=args.workers)
    b = data_epoch_seconds(cfg, baseline, workers=args.workers)
    # Per-epoch cost of the data path over the whole index, extrapolated from the sample.
    per_epoch = {k: n_patches / v["patches_per_s"] for k, v in (("cached", c), ("baseline", b))}
    res["read"] = {"cached_patches_per_s": c["patches_per_s"], "baseline_patches_per_s": b["patches_per_s"],
                   "cached_epoch_s": per_epoch["cached"], "baseline_epoch_s": per_epoch["baseline"],
                   # The baseline pays the extraction every epoch: its series/min is the cache build's rival.
                   "baseline_series_per_min_per_epoch": 60 * n_series / per_epoch["baseline"]}

    for variant in ("cached", "baseline"):
        cmd = [sys.executable, __file__, "--variant", variant, "--pre", pre, "--cache", cache, "--config",
               args.config, "--steps", str(args.steps), "--workers", str(args.workers), "--threads",
               str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        res[f"train_{variant}"] = json.loads(proc.stdout.strip().splitlines()[-1])

    tc, tb = res["train_cached"], res["train_baseline"]
    rows = [
        ("cache build (one-off)", f"{res['cache']['series_per_min']:.1f} series/min ({build_s:.1f} s, "
                                  f"{n_patches} patches); rerun {rerun_s:.2f} s"),
        ("baseline extraction", f"{res['read']['baseline_series_per_min_per_epoch']:.1f} series/min, every epoch "
                                f"({per_epoch['baseline']:.1f} s/epoch)"),
        ("read patches", f"cache {c['patches_per_s']:.0f}/s vs baseline {b['patches_per_s']:.1f}/s "
                         f"({c['patches_per_s'] / b['patches_per_s']:.0f}x)"),
        ("train (cache)", f"{tc['patches_per_s']:.1f} patches/s, peak RSS {tc['peak_rss_mib']:.0f} MiB "
                          f"(with loader workers {tc.get('peak_tree_rss_mib', float('nan')):.0f} MiB)"),
        ("train (baseline)", f"{tb['patches_per_s']:.1f} patches/s, peak RSS {tb['peak_rss_mib']:.0f} MiB "
                             f"(with loader workers {tb.get('peak_tree_rss_mib', float('nan')):.0f} MiB)"),
        ("speed-up", f"{tc['patches_per_s'] / tb['patches_per_s']:.1f}x training patches/s with the cache"),
    ]
    print(f"bench_train: {args.config}, {n_series} series, patch {res['patch_size']}, device {tc['device']}")
    for name, value in rows:
        print(f"  {name:24s} {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
