"""GPU benchmark of the vessel-ROI pipeline's model paths at real-data sizes (run on a CUDA machine).

Measured, for the shipped GPU configs (``configs/vessels_gpu.json``, ``configs/roi_gpu.json``) and, for comparison,
the CPU configs:

1. **Training**: ROI-classifier steps per second (forward, sphere + label loss, backward, AdamW) in mixed precision
   (``runtime.resolve_precision("auto")``: bf16 on GPUs that have it), reported as ROIs per second.
2. **Data path**: ROIs per second one CPU worker prepares from a cached ROI (``roi.data.sample_input``: random
   crop, position channels, vessel channels, sphere target, flip), so the number of loader workers a GPU needs is
   the training rate over this one.
3. **Predict**: seconds per series of the model part of ``predict`` (vessel segmentation by sliding windows over a
   head-sized volume at the segmenter's spacing, the ROI cut of image and vessel probabilities, the ROI classifier
   with flip TTA for 1 and 5 folds). DICOM reading and preprocessing are left out (they need SimpleITK and pydicom,
   which the bench machine may lack); ``scripts/bench_pipelines.py`` times those on a CPU.

Weights are random (timing does not depend on them). Imports only torch, numpy and dynamic-network-architectures
besides the kit's own modules. Example: ``PYTHONPATH=src python scripts/bench_gpu.py --out bench_gpu.json``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rsna_aneurysm.config import from_dict  # noqa: E402
from rsna_aneurysm.constants import LABEL_COLS  # noqa: E402
from rsna_aneurysm.region.geometry import Grid  # noqa: E402
from rsna_aneurysm.roi.data import RoiSample, sample_channels, sample_input  # noqa: E402
from rsna_aneurysm.roi.model import IN_TOTAL, RoiClassifier, flip_input  # noqa: E402
from rsna_aneurysm.runtime import autocast, resolve_precision  # noqa: E402
from rsna_aneurysm.vessels.model import IN_CHANNELS, UNetConfig, build_unet  # noqa: E402
from rsna_aneurysm.vessels.segmenter import KitSegmenter  # noqa: E402
from rsna_aneurysm.vessels.types import N_VESSEL_CLASSES  # noqa: E402

CONFIGS = ROOT / "src" / "rsna_aneurysm" / "configs"
HEAD_MM = (180.0, 220.0, 190.0)  # a head crop, x y z (what preprocessing leaves)


class _Cfg:
    """The two settings ``sample_input`` reads."""

    def __init__(self, shape: tuple[int, int, int], radius: float) -> None:
        self.roi = type("Roi", (), {"shape": shape})()
        self.sphere_radius_vox = radius


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def load_setup(name: str) -> dict:
    roi = json.loads((CONFIGS / f"roi_{name}.json").read_text())
    seg = json.loads((CONFIGS / "vessels_gpu.json").read_text()) if name == "gpu" else {}
    unet = from_dict(UNetConfig, seg.get("unet") or {})
    return {"name": name, "unet": unet, "seg_spacing": float(seg.get("spacing_mm", 1.5)),
            "seg_patch": tuple(seg.get("patch") or (40, 40, 40)), "roi_shape": tuple(roi["roi"]["shape"]),
            "roi_spacing": float(roi["roi"]["spacing_mm"]), "jitter": int(roi["roi"].get("jitter_vox", 4)),
            "batch": int(roi.get("batch_size", 2)), "radius": float(roi.get("sphere_radius_vox", 5.0)),
            "dilate": int(roi.get("dilate_vox", 3))}


def bench_train(s: dict, device: torch.device, precision: str, steps: int) -> dict:
    torch.manual_seed(0)
    model = RoiClassifier(s["unet"].features, s["unet"].blocks, s["unet"].decoder_convs, s["dilate"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    b = s["batch"]
    x = torch.rand(b, IN_TOTAL, *s["roi_shape"], device=device)
    y = (torch.rand(b, len(LABEL_COLS), device=device) > 0.8).float()
    sph = (torch.rand(b, *s["roi_shape"], device=device) > 0.99).float()

    def step() -> None:
        with autocast(device, precision):
            out = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logits"].float(), y) + \
            torch.nn.functional.binary_cross_entropy_with_logits(out["heatmap"].float()[:, 0], sph)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"rois_per_s": b * steps / dt, "step_s": dt / steps, "batch": b, "peak_gib": mem}


def bench_data_path(s: dict, n: int) -> dict:
    rng = np.random.default_rng(0)
    j = s["jitter"]
    shape = tuple(d + 2 * j for d in s["roi_shape"])
    sample = RoiSample("bench", rng.random(shape, dtype=np.float32).astype(np.float16),
                       rng.integers(0, 255, (N_VESSEL_CLASSES - 1, *shape), dtype=np.uint8),
                       np.zeros(3), np.zeros(3), s["roi_spacing"], np.array([[d / 2 for d in shape]], np.float32),
                       np.zeros(len(LABEL_COLS), np.float32))
    cfg = _Cfg(s["roi_shape"], s["radius"])
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    for _ in range(n):
        sample_input(sample, cfg, rng.integers(0, 2 * j + 1, size=3), bool(rng.random() < 0.5))
    dt = time.perf_counter() - t0
    return {"rois_per_s_per_worker": n / dt}


def bench_predict(s: dict, device: torch.device, precision: str, folds: tuple[int, ...], repeats: int) -> dict:
    from rsna_aneurysm.volume import Volume

    torch.set_num_threads(max(torch.get_num_threads(), 4))
    torch.manual_seed(0)
    net = build_unet(IN_CHANNELS, N_VESSEL_CLASSES, s["unet"])
    seg = KitSegmenter(net, s["seg_spacing"], s["seg_patch"], s["unet"], str(device), precision)
    shape = tuple(int(round(m / s["seg_spacing"])) for m in HEAD_MM[::-1])
    vol = Volume(array=np.random.default_rng(0).random(shape, dtype=np.float32), spacing=(s["seg_spacing"],) * 3,
                 origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    models = [RoiClassifier(s["unet"].features, s["unet"].blocks, s["unet"].decoder_convs, s["dilate"])
              .eval().to(device) for _ in range(max(folds))]
    center = np.asarray(HEAD_MM) / 2.0
    out: dict = {"head_shape_kji": list(shape)}
    for rep in range(repeats + 1):  # the first round warms up (cuDNN autotuning, allocations)
        _sync(device)
        t0 = time.perf_counter()
        probs = seg.segment(vol)
        _sync(device)
        t1 = time.perf_counter()
        grid = Grid.centred(center, s["roi_shape"], s["roi_spacing"])
        vessels = sample_channels(np.asarray(probs.probs[1:], dtype=np.float32), probs.grid, grid)
        x = np.concatenate([vessels[:1], np.zeros((3, *s["roi_shape"]), np.float32), vessels])
        xt = torch.from_numpy(x)[None].to(device)
        _sync(device)
        t2 = time.perf_counter()
        per_folds = {}
        with torch.no_grad():
            for k in folds:
                _sync(device)
                ta = time.perf_counter()
                for m in models[:k]:
                    for inp in (xt, flip_input(xt)):
                        with autocast(device, precision):
                            m(inp)["logits"].float().cpu()
                _sync(device)
                per_folds[k] = time.perf_counter() - ta
        if rep:
            out.setdefault("segment_s", []).append(t1 - t0)
            out.setdefault("roi_cut_s", []).append(t2 - t1)
            for k, v in per_folds.items():
                out.setdefault(f"classify_{k}fold_tta_s", []).append(v)
    res = {k: (float(np.median(v)) if k.endswith("_s") else v) for k, v in out.items()}
    for k in folds:
        res[f"model_total_{k}fold_tta_s"] = res["segment_s"] + res["roi_cut_s"] + res[f"classify_{k}fold_tta_s"]
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setups", default="gpu,cpu", help="comma list of configs to time (gpu = configs/*_gpu.json)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--repeats", type=int, default=3, help="timed predict rounds (after one warm-up)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    precision = resolve_precision("auto", device)
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "precision": precision, "results": {}}
    print(f"device {info['device']}, torch {info['torch']}, precision {precision}", flush=True)
    for name in [n for n in args.setups.split(",") if n]:
        s = load_setup(name)
        r = {"roi_shape": list(s["roi_shape"]), "roi_spacing_mm": s["roi_spacing"],
             "segmenter_spacing_mm": s["seg_spacing"], "segmenter_patch": list(s["seg_patch"]),
             "unet_features": list(s["unet"].features)}
        r["train"] = bench_train(s, device, precision, args.steps)
        print(f"[{name}] train: {r['train']['rois_per_s']:.2f} ROIs/s (batch {r['train']['batch']}, "
              f"{r['train']['step_s']:.3f} s/step, peak {r['train']['peak_gib'] or 0:.1f} GiB)", flush=True)
        r["data"] = bench_data_path(s, 20)
        need = r["train"]["rois_per_s"] / r["data"]["rois_per_s_per_worker"]
        r["data"]["workers_needed"] = need
        print(f"[{name}] data path: {r['data']['rois_per_s_per_worker']:.2f} ROIs/s per CPU worker "
              f"(~{need:.1f} workers keep the GPU fed)", flush=True)
        r["predict"] = bench_predict(s, device, precision, (1, 5), args.repeats)
        pr = r["predict"]
        print(f"[{name}] predict model part: segment {pr['segment_s']:.2f} s over {pr['head_shape_kji']}, ROI cut "
              f"{pr['roi_cut_s']:.2f} s, classifier+TTA 1 fold {pr['classify_1fold_tta_s']:.2f} s / 5 folds "
              f"{pr['classify_5fold_tta_s']:.2f} s; total 1 fold {pr['model_total_1fold_tta_s']:.2f} s, 5 folds "
              f"{pr['model_total_5fold_tta_s']:.2f} s per series", flush=True)
        info["results"][name] = r
    if args.out:
        Path(args.out).write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
