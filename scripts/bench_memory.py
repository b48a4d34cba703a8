"""Benchmark peak memory of the kernel's ``predict`` on one series, one fresh subprocess per case.

Cases (synthetic CTA, ``tiny`` preset, an untrained ``unet3d_tiny`` at 1 mm: memory does not depend on weights):

* ``normal``: the series as generated (the baseline every ratio is against).
* ``huge``: the same series whose header claims PixelSpacing 100 mm (a grid of ~1e9 voxels at 1 mm), with the
  resampling limit at its default (``PreprocessConfig.max_voxels``): it must end as a fallback row, and its peak
  must stay within ``normal + --bound-mb`` (exit 1 otherwise).
* ``huge-unbounded``: the same series with every grid check disabled, stopped by the parent when the child's RSS
  passes ``--cap-gb`` (then reported as "exceeded"), so the bench itself cannot OOM the machine.

The loader's own plausibility checks (PixelSpacing range, extent) are widened in the children, so what is measured
is the resampling limit and not the loader refusing the header first. Peak = the child's ``ru_maxrss`` (or, for a
killed child, the largest RSS the parent sampled). Example: ``python scripts/bench_memory.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HUGE_SPACING_MM = 100.0


def _series(root: Path, spacing_mm: float | None) -> Path:
    import pydicom

    from rsna_aneurysm.data.synth import SeriesSpec, make_series

    uid = "1.2.826.0.1.9999.5" + ("0" if spacing_mm is None else "1")
    folder = root / uid
    make_series(folder, SeriesSpec(modality="CTA", preset="tiny", test_tags_only=True, tilt=False, seed=3),
                series_uid=uid, keep_volume=False)
    if spacing_mm is not None:
        for f in sorted(folder.glob("*.dcm")):
            ds = pydicom.dcmread(f)
            ds.PixelSpacing = [spacing_mm, spacing_mm]
            ds.save_as(f)
    return folder


def _widen_loader() -> None:
    from rsna_aneurysm.io import dicom

    wide = {"pixel_spacing_range": (0.01, 1e4), "slice_spacing_range": (0.01, 1e4), "max_extent_mm": 1e7}
    wide = {k: v for k, v in wide.items() if k in {f.name for f in dataclasses.fields(dicom.LoadOptions)}}
    original = dicom.load_series

    def load(folder, options=None, modality=None):
        return original(folder, dataclasses.replace(options or dicom.LoadOptions(), **wide), modality)
    dicom.load_series = load


def child(weights: str, series: str, unbounded: bool) -> int:
    from rsna_aneurysm.infer.predictor import Predictor, PredictorConfig
    from rsna_aneurysm.preprocess import geometry

    _widen_loader()
    if unbounded:  # every resampled grid unbounded, as before the limit existed
        geometry.check_grid_size = lambda *args, **kwargs: None
    share = tempfile.mkdtemp(prefix="bench_memory_share_")
    predictor = Predictor.from_weights(weights, PredictorConfig(share_root=share + "/x/y", tta_flip=False,
                                                                 use_budget=False))
    predictor.load()
    t0 = time.perf_counter()
    predictor.predict(series)
    out = {"seconds": round(time.perf_counter() - t0, 2), "peak_mb": resource.getrusage(resource.RUSAGE_SELF)
           .ru_maxrss / 1024, "fallback_kinds": predictor.fallback_kinds,
           "reason": predictor.fallback_reasons[0][1][:160] if predictor.fallback_reasons else ""}
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def run_case(weights: Path, series: Path, unbounded: bool, cap_mb: float, timeout_s: float) -> dict:
    cmd = [sys.executable, __file__, "--child", str(weights), str(series)] + (["--unbounded"] if unbounded else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ps = psutil.Process(proc.pid)
    sampled, why = 0.0, ""
    t0 = time.perf_counter()
    while proc.poll() is None:
        try:
            sampled = max(sampled, ps.memory_info().rss / 2**20)
        except psutil.Error:
            pass
        if sampled > cap_mb or time.perf_counter() - t0 > timeout_s:
            why = f"exceeded {cap_mb / 1024:.0f} GB" if sampled > cap_mb else f"over {timeout_s:.0f} s"
            proc.kill()
            break
        time.sleep(0.02)
    stdout, _ = proc.communicate()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if why or not lines:
        return {"peak_mb": sampled, "seconds": round(time.perf_counter() - t0, 2), "killed": why or "no result",
                "fallback_kinds": {}, "reason": ""}
    res = json.loads(lines[-1][len("RESULT "):])
    res["peak_mb"] = max(res["peak_mb"], sampled)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", nargs=2, metavar=("WEIGHTS", "SERIES"), help=argparse.SUPPRESS)
    p.add_argument("--unbounded", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bound-mb", type=float, default=500.0, help="huge-extent peak may exceed normal by this much")
    p.add_argument("--cap-gb", type=float, default=6.0, help="RSS at which the unbounded baseline is stopped")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds per case")
    p.add_argument("--skip-unbounded", action="store_true", help="do not run the unbounded baseline")
    a = p.parse_args(argv)
    if a.child:
        return child(a.child[0], a.child[1], a.unbounded)

    from _bench_infer import untrained_weights

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        weights = untrained_weights(root / "run")
        normal, huge = _series(root / "series", None), _series(root / "series", HUGE_SPACING_MM)
        cases = [("normal", normal, False), (f"huge ({HUGE_SPACING_MM:g} mm), limit on", huge, False)]
        if not a.skip_unbounded:
            cases.append((f"huge ({HUGE_SPACING_MM:g} mm), limit off", huge, True))
        results = {name: run_case(weights, s, unb, a.cap_gb * 1024, a.timeout) for name, s, unb in cases}
    base = results["normal"]["peak_mb"]
    print(f"{'case':32s} {'peak MB':>9s} {'x normal':>9s} {'s':>7s}  outcome")
    for name, r in results.items():
        outcome = r.get("killed") or (", ".join(f"{k} x{v}" for k, v in r["fallback_kinds"].items()) or "predicted")
        print(f"{name:32s} {r['peak_mb']:9.0f} {r['peak_mb'] / base:9.2f} {r['seconds']:7.2f}  {outcome}")
    huge_r = results[cases[1][0]]
    bound = base + a.bound_mb
    ok = huge_r["peak_mb"] <= bound and huge_r["fallback_kinds"] == {"GridTooLargeError": 1}
    print(f"bound: huge-extent peak {huge_r['peak_mb']:.0f} MB <= normal {base:.0f} MB + {a.bound_mb:.0f} MB = "
          f"{bound:.0f} MB and a GridTooLargeError fallback row: {'ok' if ok else 'FAILED'}")
    if huge_r["reason"]:
        print("reason:", huge_r["reason"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
