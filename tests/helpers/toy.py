"""Test helper (not a test module): a tiny preprocessed folder (docs/layout.md) written directly, for tests of the
later stages and scripts/bench_train.py.

Each series is a small 1 mm volume: an ellipsoid of head tissue with noise, a few bright straight vessels, and on
positive series one or two brighter spheres (the aneurysms) whose voxel positions go to ``localizers.parquet``.
It needs neither DICOM nor the preprocessing step, so cache and training tests stay fast and independent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from rsna_aneurysm.constants import ANEURYSM_PRESENT, ID_COL, LABEL_COLS, LOCATION_COLS, TRAIN_COLS
from rsna_aneurysm.io.nifti import write_volume
from rsna_aneurysm.volume import Volume


def toy_volume(shape: tuple[int, int, int], points: list[tuple[float, float, float]], rng: np.random.Generator,
               radius: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """(volume float32 roughly 0..1, head mask uint8) with spheres at ``points`` (k, j, i)."""
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    c = (np.asarray(shape, dtype=np.float32) - 1) / 2
    r = np.asarray(shape, dtype=np.float32) * 0.45
    head = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1.0
    vol = np.where(head, 0.3, 0.0).astype(np.float32) + rng.normal(0, 0.04, shape).astype(np.float32)
    for _ in range(3):  # vessels: bright tubes of radius ~1 along a random axis through the head
        axis = int(rng.integers(0, 3))
        off = rng.uniform(0.3, 0.7, size=3) * np.asarray(shape)
        grids = (zz, yy, xx)
        d2 = sum((grids[a] - off[a]) ** 2 for a in range(3) if a != axis)
        vol[(d2 <= 1.2) & head] = 0.7
    for p in points:
        d2 = (zz - p[0]) ** 2 + (yy - p[1]) ** 2 + (xx - p[2]) ** 2
        vol[d2 <= radius ** 2] = 1.0
    return vol, head.astype(np.uint8)


def write_toy_preprocessed(out: str | Path, n_series: int = 8, shape: tuple[int, int, int] = (48, 48, 48),
                           positive_fraction: float = 0.5, seed: int = 0, broken: int = 0) -> Path:
    """Write ``n_series`` toy series (the last ``broken`` with an unreadable volume file) as a preprocessed folder."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows, locs, labels = [], [], []
    for s in range(n_series):
        uid = f"1.2.826.0.1.{seed}.{s}"
        positive = s < round(n_series * positive_fraction)
        n_an = int(rng.integers(1, 3)) if positive else 0
        margin = np.asarray(shape) * 0.3
        points = [tuple(float(v) for v in rng.uniform(margin, np.asarray(shape) - margin)) for _ in range(n_an)]
        locations = [LOCATION_COLS[int(rng.integers(0, len(LOCATION_COLS)))] for _ in range(n_an)]
        vol, head = toy_volume(shape, points, rng)
        vpath, mpath = f"volumes/{uid}.nii.gz", f"masks/{uid}.nii.gz"
        write_volume(Volume(vol, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), out / vpath)
        write_volume(Volume(head, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), out / mpath, dtype=np.uint8)
        if s >= n_series - broken:
            (out / vpath).write_bytes(b"not a nifti file")
        rows.append({ID_COL: uid, "Modality": "CTA", "status": "ok", "error": None, "volume": vpath, "mask": mpath,
                     "shape_kji": list(shape), "spacing_ijk": [1.0, 1.0, 1.0]})
        for p, loc in zip(points, locations):
            locs.append({ID_COL: uid, "SOPInstanceUID": f"{uid}.{int(p[0])}", "location": loc, "i": p[2],
                         "j": p[1], "k": p[0], "status": "ok"})
        lab = {c: 0 for c in LABEL_COLS}
        for loc in locations:
            lab[loc] = 1
        lab[ANEURYSM_PRESENT] = int(positive)
        labels.append({ID_COL: uid, "PatientAge": 60, "PatientSex": "Female", "Modality": "CTA", **lab})
    pl.DataFrame(rows).write_parquet(out / "manifest.parquet")
    loc_schema = {ID_COL: pl.Utf8, "SOPInstanceUID": pl.Utf8, "location": pl.Utf8, "i": pl.Float64,
                  "j": pl.Float64, "k": pl.Float64, "status": pl.Utf8}
    pl.DataFrame(locs, schema=loc_schema).write_parquet(out / "localizers.parquet")
    pl.DataFrame(labels).select(TRAIN_COLS).write_csv(out / "train.csv")
    return out
