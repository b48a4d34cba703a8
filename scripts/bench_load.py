"""Benchmark: loading + resampling a `full` synthetic CTA series, the kit against plain SimpleITK.

Baseline (measured in the same run): ``sitk.ImageSeriesReader`` (GDCM file-name sort + read) followed by
``sitk.Resample`` to 1 mm isotropic. Kit: ``load_series`` + ``reorient_canonical`` + ``resample`` onto the same
identity-direction 1 mm grid. Both outputs are checked to have equal geometry and near-equal voxels. Each pipeline
runs in a fresh child process so its peak memory (ru_maxrss high-water mark above the post-import baseline) is its
own. The kit's full preprocessing (mask + normalisation) is timed too, for information.

    .venv/bin/python scripts/bench_load.py [--series N] [--repeats R] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _baseline(folder: str, spacing: float) -> tuple[float, float, dict]:
    import SimpleITK as sitk

    from rsna_aneurysm.preprocess.geometry import canonical_grid
    from rsna_aneurysm.volume import Volume

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    base = _rss_mb()
    t0 = time.perf_counter()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    img = reader.Execute()
    # Only the geometry matters here (np.empty stays unallocated until touched).
    ref = Volume(np.empty(img.GetSize()[::-1], np.int8), img.GetSpacing(), img.GetOrigin(),
                 np.asarray(img.GetDirection()).reshape(3, 3))
    origin, sp, size = canonical_grid(ref, (spacing,) * 3)
    out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, origin, sp, np.eye(3).ravel().tolist(),
                        -1024.0, sitk.sitkFloat32)
    dt = time.perf_counter() - t0
    arr = sitk.GetArrayFromImage(out)
    return dt, _rss_mb() - base, {"origin": out.GetOrigin(), "spacing": out.GetSpacing(), "size": out.GetSize(),
                                  "sum": float(arr.sum(dtype=np.float64)), "arr": arr}


def _kit(folder: str, spacing: float, full: bool) -> tuple[float, float, dict]:
    import SimpleITK as sitk

    from rsna_aneurysm.io.dicom import load_series
    from rsna_aneurysm.preprocess.geometry import reorient_canonical, resample
    from rsna_aneurysm.preprocess.pipeline import PreprocessConfig, preprocess_volume

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    base = _rss_mb()
    t0 = time.perf_counter()
    vol = load_series(folder, modality="CTA")
    if full:
        out, _ = preprocess_volume(vol, PreprocessConfig(spacing=(spacing,) * 3))
    else:
        out = resample(reorient_canonical(vol), (spacing,) * 3, default_value=-1024.0)
    dt = time.perf_counter() - t0
    return dt, _rss_mb() - base, {"origin": out.origin, "spacing": out.spacing, "size": out.shape_ijk,
                                  "sum": float(out.array.sum(dtype=np.float64)), "arr": out.array}


def _child(fn_name: str, folder: str, spacing: float, q) -> None:
    fn = {"baseline": _baseline, "kit": lambda f, s: _kit(f, s, False), "kit_full": lambda f, s: _kit(f, s, True)}
    q.put(fn[fn_name](folder, spacing))


def run_in_child(name: str, folder: str, spacing: float) -> tuple[float, float, dict]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(name, folder, spacing, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=2, help="number of full synthetic CTA series")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--spacing", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the generated series here")
    args = ap.parse_args()

    from rsna_aneurysm.data.synth import SeriesSpec, make_series

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_load_"))
    folders = []
    for s in range(args.series):
        folder = work / f"cta_{s}"
        if not folder.exists() or not any(folder.iterdir()):
            print(f"generating full CTA series {s} in {folder} ...", flush=True)
            make_series(folder, SeriesSpec(modality="CTA", plane="axial", preset="full", seed=100 + s))
        folders.append(str(folder))

    rows = []
    for folder in folders:
        nbytes = sum(p.stat().st_size for p in Path(folder).iterdir())
        times: dict[str, list[float]] = {"baseline": [], "kit": [], "kit_full": []}
        mems: dict[str, list[float]] = {k: [] for k in times}
        outs = {}
        for _ in range(args.repeats):
            for name in times:
                dt, mem, out = run_in_child(name, folder, args.spacing)
                times[name].append(dt)
                mems[name].append(mem)
                outs[name] = out
        b, k = outs["baseline"], outs["kit"]
        same_grid = (np.allclose(b["origin"], k["origin"], atol=1e-4) and np.allclose(b["spacing"], k["spacing"])
                     and tuple(b["size"]) == tuple(k["size"]))
        diff = float(np.max(np.abs(b["arr"] - k["arr"]))) if same_grid else float("nan")
        med = {n: statistics.median(v) for n, v in times.items()}
        rows.append((Path(folder).name, nbytes, med, {n: max(v) for n, v in mems.items()}, same_grid, diff))

    print()
    print(f"{'series':8} {'MB':>6} {'sitk s':>7} {'kit s':>7} {'speedup':>8} {'kit+prep s':>10} "
          f"{'sitk MB':>8} {'kit MB':>7} {'kit/raw':>8} {'grid':>5} {'max|diff|':>9}")
    for name, nbytes, med, mem, same, diff in rows:
        raw_mb = nbytes / 2**20
        print(f"{name:8} {raw_mb:6.0f} {med['baseline']:7.2f} {med['kit']:7.2f} {med['baseline'] / med['kit']:7.2f}x "
              f"{med['kit_full']:10.2f} {mem['baseline']:8.0f} {mem['kit']:7.0f} {mem['kit'] / raw_mb:7.2f}x "
              f"{'same' if same else 'DIFF':>5} {diff:9.3g}")
    speed = statistics.median(r[2]["baseline"] / r[2]["kit"] for r in rows)
    memr = max(r[3]["kit"] / (r[1] / 2**20) for r in rows)
    print(f"\nmedian speedup vs SimpleITK ImageSeriesReader + Resample: {speed:.2f}x (target >= 1.5x); "
          f"peak memory / raw series bytes: {memr:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
