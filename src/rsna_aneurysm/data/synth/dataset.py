"""A whole synthetic competition folder: train/test series, CSVs, segmentations, solution and truth files.

Labels come from :func:`~.labels.draw_cases`; DICOM quirks (planes, multi-frame files, reversed or shuffled
ordering, odd slices, MONOCHROME1, RLE) are spread over the series by quota, with at least one of each where the
set is big enough, so even a demo-sized set exercises every reader path. Each series has its own seed, so the
output does not depend on the number of workers.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
from pydicom.uid import RLELossless

from ...constants import ID_COL, LABEL_COLS, LOCALIZER_COLS
from ...io.atomic import atomic_write_csv, atomic_write_text
from .geometry import PRESETS
from .labels import COVER_MIN_SERIES, SPLIT_CODES, Case, cases_frame, draw_cases, label_profile
from .series import SeriesSpec, coordinates_str, make_series

log = logging.getLogger(__name__)

# Share of series with each quirk, and the set size from which at least one is guaranteed.
QUIRKS: dict[str, tuple[float, int]] = {
    "coronal": (0.05, 12),
    "sagittal": (0.05, 12),
    "multiframe": (0.07, 5),
    "multiframe_no_geometry": (0.2, 24),  # share of the multi-frame series
    "reversed": (0.15, 8),
    "shuffle_instance_numbers": (0.10, 8),
    "odd_slice": (0.04, 12),  # share of the single-frame series
    "monochrome1": (0.03, 24),  # share of the MR series
    "rle": (0.03, 24),  # RLE Lossless transfer syntax, share of the single-frame series
}
SEGMENTATION_RATE = 0.07
OUTPUTS = ("train.csv", "train_localizers.csv", "synth_truth.json", "series", "segmentations", "test")


def _count(n: int, quirk: str) -> int:
    rate, guarantee_from = QUIRKS[quirk]
    return min(n, max(int(round(rate * n)), 1 if n >= guarantee_from else 0))


def _pick(rng: np.random.Generator, candidates: list[int], k: int) -> set[int]:
    k = min(k, len(candidates))
    return {candidates[i] for i in rng.choice(len(candidates), size=k, replace=False)} if k else set()


def plan_specs(cases: list[Case], split: str, preset: str, seed: int, n_total: int | None = None) -> list[SeriesSpec]:
    """One SeriesSpec per case with the dataset's quirks distributed by quota (``n_total`` sets the guarantees)."""
    n = len(cases)
    size = n if n_total is None else n_total
    rng = np.random.default_rng([seed, SPLIT_CODES[split], 23])
    everyone = list(range(n))
    coronal = _pick(rng, everyone, _count(size, "coronal"))
    sagittal = _pick(rng, [i for i in everyone if i not in coronal], _count(size, "sagittal"))
    # One multi-frame series is positive (when any is), so localizer rows with a frame index 'f' exist.
    n_mf = _count(size, "multiframe")
    positives = [i for i in everyone if cases[i].positive]
    multiframe = _pick(rng, positives, 1) if n_mf and positives else set()
    multiframe |= _pick(rng, [i for i in everyone if i not in multiframe], n_mf - len(multiframe))
    n_nogeo = max(int(round(QUIRKS["multiframe_no_geometry"][0] * n_mf)),
                  1 if size >= QUIRKS["multiframe_no_geometry"][1] else 0)
    keep = set(list(sorted(multiframe & set(positives)))[:1]) if len(multiframe) > 1 else set()
    no_geometry = _pick(rng, sorted(multiframe - keep), n_nogeo)
    reversed_ = _pick(rng, everyone, _count(size, "reversed"))
    shuffled = _pick(rng, everyone, _count(size, "shuffle_instance_numbers"))
    single = [i for i in everyone if i not in multiframe]
    odd = _pick(rng, single, _count(size, "odd_slice"))
    mr = [i for i in everyone if cases[i].modality != "CTA"]
    mono = _pick(rng, mr, _count(size, "monochrome1"))
    rle = _pick(rng, [i for i in single if i not in odd], _count(size, "rle"))
    specs = []
    for i, case in enumerate(cases):
        series_seed = int(np.random.SeedSequence([seed, SPLIT_CODES[split], i]).generate_state(1)[0])
        specs.append(SeriesSpec(
            modality=case.modality, plane="coronal" if i in coronal else "sagittal" if i in sagittal else "axial",
            preset=preset, multiframe=i in multiframe, multiframe_no_geometry=i in no_geometry,
            reversed=i in reversed_, shuffle_instance_numbers=i in shuffled, odd_slice=i in odd,
            test_tags_only=split == "test", locations=case.locations,
            transfer_syntax=str(RLELossless) if i in rle else None, seed=series_seed, monochrome1=i in mono,
            patient_id=case.patient_id, patient_age=case.age, patient_sex=case.sex))
    return specs


def _run_job(job: tuple[Path, SeriesSpec, str, Path | None]) -> dict:
    series_dir, spec, uid, seg_dir = job
    return make_series(series_dir, spec, uid, seg_dir=seg_dir, keep_volume=False)


def _prepare_out(out: Path, overwrite: bool) -> None:
    present = [name for name in OUTPUTS if (out / name).exists()]
    if present and not overwrite:
        raise FileExistsError(f"{out}: already holds {', '.join(present)}; pass overwrite=True (--overwrite) to "
                              f"replace a synthetic dataset")
    for name in present:
        p = out / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _localizer_frame(truths: list[dict]) -> pl.DataFrame:
    rows = [(t["series_uid"], loc["SOPInstanceUID"], coordinates_str(loc["x"], loc["y"], loc["f"]), loc["location"])
            for t in truths for loc in t["localizers"]]
    return pl.DataFrame(rows, schema=dict.fromkeys(LOCALIZER_COLS, pl.String), orient="row")


def generate_dataset(out: Path, n_series: int, preset: str = "tiny", seed: int = 0, n_test: int | None = None,
                     workers: int = 1, overwrite: bool = False, progress: bool = False,
                     test_cover_labels: bool = False, test_cover_min: int = 1) -> dict:
    """Write a synthetic competition folder into ``out`` (layout in docs/layout.md); return summary counts.

    ``n_test`` extra series (default ``max(2, n_series // 5)``) go to ``out/test`` with test-time tags only.
    Labels equal ``draw_label_table(n_series, seed)``. The same arguments give byte-identical files.
    ``test_cover_labels`` draws the test labels with ``cover_labels=True`` (every column of ``test/solution.csv``
    holds both classes, so the metric is defined); it needs ``n_test >= COVER_MIN_SERIES`` (16), the default then.
    ``test_cover_min`` (with ``test_cover_labels``) asks for that many positive test series per location. Preset
    ``bench`` also draws its labels from the real localizer counts with one series per patient (``label_profile``).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
    if n_series < 1:
        raise ValueError(f"n_series must be >= 1, got {n_series}")
    if n_test is None:
        n_test = max(COVER_MIN_SERIES if test_cover_labels else 2, n_series // 5)
    if n_test < 0:
        raise ValueError(f"n_test must be >= 0, got {n_test}")
    if test_cover_labels and n_test < COVER_MIN_SERIES:
        raise ValueError(f"test_cover_labels (--test-cover-labels) needs n_test >= {COVER_MIN_SERIES}, got {n_test}")
    start = time.perf_counter()
    out = Path(out)
    _prepare_out(out, overwrite)
    profile = label_profile(preset)
    train_cases = draw_cases(n_series, seed, "train", profile=profile)
    test_cases = draw_cases(n_test, seed, "test", cover_labels=test_cover_labels, profile=profile,
                            cover_min=test_cover_min)
    train_specs = plan_specs(train_cases, "train", preset, seed)
    test_specs = plan_specs(test_cases, "test", preset, seed)
    n_seg = min(n_series, max(int(round(SEGMENTATION_RATE * n_series)), 1 if n_series >= 4 else 0))
    seg_rng = np.random.default_rng([seed, 31])
    with_seg = set(seg_rng.choice(n_series, size=n_seg, replace=False).tolist()) if n_seg else set()
    jobs = [(out / "series" / c.series_uid, s, c.series_uid,
             out / "segmentations" / c.series_uid if i in with_seg else None)
            for i, (c, s) in enumerate(zip(train_cases, train_specs, strict=True))]
    jobs += [(out / "test" / "series" / c.series_uid, s, c.series_uid, None)
             for c, s in zip(test_cases, test_specs, strict=True)]
    if workers > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")  # no fork: the parent may hold threads (polars, torch)
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
            truths = list(_progress(pool.map(_run_job, jobs), len(jobs), progress))
    else:
        truths = [_run_job(j) for j in _progress(jobs, len(jobs), progress)]
    train_truths, test_truths = truths[:n_series], truths[n_series:]

    atomic_write_csv(cases_frame(train_cases), out / "train.csv")
    atomic_write_csv(_localizer_frame(train_truths), out / "train_localizers.csv")
    (out / "test").mkdir(exist_ok=True)
    solution = cases_frame(test_cases)
    atomic_write_csv(solution.select(ID_COL), out / "test" / "test.csv")
    atomic_write_csv(solution.select(ID_COL, *LABEL_COLS), out / "test" / "solution.csv")
    truth_json = {}
    for split, ts in (("train", train_truths), ("test", test_truths)):
        for t in ts:
            entry = {k: v for k, v in t.items() if k != "series_uid"}
            entry["split"] = split
            truth_json[t["series_uid"]] = entry
    atomic_write_text(out / "synth_truth.json", json.dumps(truth_json, indent=1, sort_keys=True) + "\n")

    summary = {
        "out": str(out), "preset": preset, "seed": seed,
        "n_train": n_series, "n_test": n_test,
        "n_positive_train": sum(c.positive for c in train_cases),
        "n_positive_test": sum(c.positive for c in test_cases),
        "n_localizers": sum(len(t["localizers"]) for t in train_truths),
        "n_localizers_with_f": sum(loc["f"] is not None for t in train_truths for loc in t["localizers"]),
        "n_segmentations": n_seg,
        "modalities": dict(sorted(Counter(t["modality"] for t in truths).items())),
        "planes": dict(sorted(Counter(t["plane"] for t in truths).items())),
        "quirks": {q: sum(bool(t[q]) for t in truths) for q in
                   ("multiframe", "multiframe_no_geometry", "reversed", "shuffle_instance_numbers", "odd_slice")}
        | {"monochrome1": sum(t["photometric"] == "MONOCHROME1" for t in truths),
           "rle": sum(t["transfer_syntax"] is not None for t in truths)},
        "seconds": round(time.perf_counter() - start, 2),
    }
    log.info("synthetic dataset: %d train + %d test series in %.1f s -> %s", n_series, n_test,
             summary["seconds"], out)
    return summary


def _progress(it, total: int, enabled: bool):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc="synth", unit="series")

