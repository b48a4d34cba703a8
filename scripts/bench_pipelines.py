"""Benchmark ``predict`` per series: whole-scan vs two-stage pipeline on the same fine model, and the vessel-ROI
pipeline (vessel segmenter, region from the vessels, ROI classifier).

For each modality, one ``full`` synthetic series (512 x 512 matrix, a few hundred slices; test-time tags only) goes
through ``Predictor.predict`` twice: with ``pipeline whole`` (sliding windows over the head) and ``pipeline
two_stage`` (region finder on a coarse view, then the fine model's sliding windows over the region crop). Printed
per series: total seconds and the split into reading, preprocessing, stage one (region), model and aggregation, and
the ratio whole / two-stage measured in this run. Target on this 2-core CPU for the two-stage default: <= 8 s.

Without ``--weights`` a stand-in two-stage run is built: the demo's fine model (model, window size and spacing
read from the shipped ``unet3d_region_demo`` config; untrained: timing does not depend on the weights) plus an
untrained region finder whose spread check is disabled, so every series runs the finder and crops the default
box (the work a trained finder does).

Without ``--roi-weights`` the vessel-ROI pipeline is a stand-in of the shipped CPU configs, untrained: the default
``SegmenterConfig`` segmenter and a ``roi_cpu`` classifier (the untrained segmenter finds no vessels, so the region
comes from the fallback; the segmenter and classifier still run in full). Target on this CPU: <= 8 s per series.

Example: ``python scripts/bench_pipelines.py --out bench_pipelines.json``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from _bench_infer import predict_timing, untrained_weights
from rsna_aneurysm.config import to_dict
from rsna_aneurysm.constants import MODALITIES


def stand_in_run(run_dir: Path) -> Path:
    """Untrained demo-sized fine model + untrained finder that always answers (no fallback)."""
    from rsna_aneurysm.cli_common import resolve_config
    from rsna_aneurysm.region.finder import RegionConfig, RegionFinder
    from rsna_aneurysm.region.train_finder import FINDER_FILE, REGION_DIR, REGION_FILE
    from rsna_aneurysm.train.config import load_train_config

    demo = load_train_config(resolve_config("unet3d_region_demo"))
    untrained_weights(run_dir, demo.model.name, dict(demo.model.kwargs), patch=int(demo.cache.patch_size[0]),
                      spacing_mm=float(demo.cache.spacing_mm))
    cfg = RegionConfig(max_spread_mm=1e9)
    folder = run_dir / REGION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    finder = RegionFinder(cfg.finder.channels).eval()
    torch.save({"state_dict": finder.state_dict(), "finder": to_dict(cfg.finder), "kind": "region_finder"},
               folder / FINDER_FILE)
    (folder / REGION_FILE).write_text(json.dumps(to_dict(cfg), indent=2))
    (run_dir / "predictor.json").write_text(json.dumps({"tta_flip": False}))
    return run_dir


def stand_in_roi_run(run_dir: Path, roi_config: str = "roi_cpu") -> Path:
    """Untrained vessel-ROI weights folder of the shipped CPU configs (timing does not depend on the weights)."""
    from rsna_aneurysm.cli_common import resolve_config
    from rsna_aneurysm.config import load_config
    from rsna_aneurysm.roi.train import RoiTrainConfig, untrained_roi_run

    untrained_roi_run(run_dir, load_config(RoiTrainConfig, resolve_config(roi_config)))
    (run_dir / "predictor.json").write_text(json.dumps({"tta_flip": False}))
    return run_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", help="two-stage run folder (default: an untrained stand-in, see above)")
    p.add_argument("--roi-weights", help="vessel-ROI run folder (default: an untrained stand-in, see above)")
    p.add_argument("--preset", default="full", help="synthetic preset (tiny|small|full)")
    p.add_argument("--modalities", default=",".join(MODALITIES), help="comma list of modalities")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--tta", choices=("config", "on", "off"), default="config",
                   help="flip TTA (default: the weights' predictor settings; the stand-in has it off)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mods = tuple(m for m in args.modalities.split(",") if m)
    with tempfile.TemporaryDirectory(prefix="rsna_bench_pipe_") as tmp:
        weights = Path(args.weights) if args.weights else stand_in_run(Path(tmp) / "run")
        series = Path(tmp) / "series"  # generated once, read by both pipelines
        tta = {} if args.tta == "config" else {"tta_flip": args.tta == "on"}
        roi = Path(args.roi_weights) if args.roi_weights else stand_in_roi_run(Path(tmp) / "roi")
        rows = {name: predict_timing(w, mods, args.preset, {"pipeline": pipe, **tta}, keep=series)
                for name, w, pipe in (("whole-scan", weights, "whole"), ("two-stage", weights, "two_stage"),
                                      ("vessel-roi", roi, "vessel_roi"))}
    print(f"predict per series ({args.preset} synthetic series, {torch.get_num_threads()} threads, flip TTA "
          f"{args.tta})")
    print(f"{'modality':11s} {'pipeline':10s} {'total':>6s} {'read':>5s} {'prep':>5s} {'region':>6s} {'model':>6s} "
          f"{'aggr':>5s} {'windows':>7s}  shape (k,j,i)")
    for i, m in enumerate(mods):
        for name in rows:
            r = rows[name][i]
            print(f"{m:11s} {name:10s} {r['total_s']:6.2f} {r['read_s']:5.2f} {r['preprocess_s']:5.2f} "
                  f"{r.get('region_s', 0.0):6.2f} {r['model_s']:6.2f} {r['aggregate_s']:5.2f} {r['windows']:7d}  "
                  f"{r['shape_kji']}")
        ratio = rows["whole-scan"][i]["total_s"] / max(rows["two-stage"][i]["total_s"], 1e-9)
        roi_ratio = rows["vessel-roi"][i]["total_s"] / max(rows["two-stage"][i]["total_s"], 1e-9)
        print(f"{'':11s} whole-scan / two-stage: {ratio:.2f}x; vessel-roi / two-stage: {roi_ratio:.2f}x")
    worst = max(r["total_s"] for r in rows["two-stage"])
    roi_worst = max(r["total_s"] for r in rows["vessel-roi"])
    mean_ratio = sum(w["total_s"] for w in rows["whole-scan"]) / sum(t["total_s"] for t in rows["two-stage"])
    roi_ratio = sum(w["total_s"] for w in rows["vessel-roi"]) / sum(t["total_s"] for t in rows["two-stage"])
    ok = worst <= 8.0 and roi_worst <= 8.0
    print(f"two-stage worst {worst:.2f} s, vessel-roi worst {roi_worst:.2f} s per series (target <= 8 s: "
          f"{'met' if ok else 'NOT met'}); whole-scan takes {mean_ratio:.2f}x and vessel-roi {roi_ratio:.2f}x as long "
          "as two-stage in total")
    if args.out:
        Path(args.out).write_text(json.dumps({"preset": args.preset, "threads": torch.get_num_threads(),
                                              "rows": rows, "two_stage_worst_s": worst, "vessel_roi_worst_s": roi_worst,
                                              "whole_over_two_stage": mean_ratio,
                                              "vessel_roi_over_two_stage": roi_ratio}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
