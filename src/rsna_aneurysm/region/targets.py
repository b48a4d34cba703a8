"""What the region finder and the location atlas learn from: per series, where the arterial region is.

The region of a series is defined from its arteries, one point set per location (the 13 of the label table):

- **segmentation** (the competition's ~178 vessel segmentations, mapped onto the preprocessed grid): the voxels of
  each label;
- **truth** (synthetic data only, ``synth_truth.json``): the generator's vessel tree placed by the series' pose;
- **localizer** (any positive series): the aneurysm positions, through the mean offset of each location from the
  region centre learned on the series that have one of the two sources above.

The region **centre** is the mean of the per-location centroids (each location weighs the same, so a long vessel
does not pull it), the **extent** the half-size of the box around those centroids. The **atlas** is the pooled
point set of every location as offsets from its series' centre (in mm, patient axes): the location head of the
two-stage pipeline asks it which artery a finding sits on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import polars as pl

from ..constants import ID_COL, LOCATION_COLS, SEG_LABEL_OF
from ..io.atomic import atomic_write_parquet
from ..layout import DataDir, PreDir, read_manifest

log = logging.getLogger(__name__)

SOURCES = ("truth", "segmentation", "localizer")


def _centre_extent(points: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    cents = np.stack([p.mean(axis=0) for p in points.values()])
    lo, hi = cents.min(axis=0), cents.max(axis=0)
    return cents.mean(axis=0), (hi - lo) / 2.0


def truth_points(entry: dict, step_mm: float = 2.0) -> dict[str, np.ndarray]:
    """Synthetic truth of one series -> world points along each location's vessels."""
    from ..data.synth.anatomy import Pose, vessel_tree

    pose_d = entry["pose"]
    pose = Pose(rotation=np.asarray(pose_d["rotation"], dtype=np.float64),
                translation=np.asarray(pose_d["translation"], dtype=np.float64), scale=float(pose_d["scale"]))
    out: dict[str, list[np.ndarray]] = {}
    for seg in vessel_tree():
        n = max(int(np.ceil(seg.length / step_mm)), 1)
        t = (np.arange(n) + 0.5) / n
        out.setdefault(seg.location, []).append(seg.p0[None, :] + t[:, None] * (seg.p1 - seg.p0)[None, :])
    return {loc: pose.to_world(np.concatenate(v)) for loc, v in out.items()}


def segmentation_points(path: str | Path, max_points: int = 400, seed: int = 0) -> dict[str, np.ndarray]:
    """A label volume (preprocessed grid) -> world points of each location's voxels (at most ``max_points`` each)."""
    from ..io.nifti import read_volume

    seg = read_volume(path, mmap=False)
    arr = np.asarray(seg.array)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for loc, label in SEG_LABEL_OF.items():
        if loc not in LOCATION_COLS:
            continue
        kji = np.argwhere(arr == label)
        if len(kji) == 0:
            continue
        if len(kji) > max_points:
            kji = kji[rng.choice(len(kji), max_points, replace=False)]
        out[loc] = seg.index_to_world(kji[:, ::-1].astype(np.float64))
    return out


def build_targets(pre_dir: str | Path, data_dir: str | Path | None = None, min_locations: int = 6,
                  atlas_points: int = 60, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(targets, atlas) of a preprocessed folder; also written there as ``region_targets.parquet`` and
    ``region_atlas.parquet``. ``data_dir``: the competition folder, read for ``synth_truth.json`` when present.

    A segmentation or truth with fewer than ``min_locations`` locations present (a slab that cut most arteries)
    gives no target. ``atlas_points``: points kept per location and series.
    """
    pre = Path(pre_dir)
    manifest = read_manifest(pre)
    truth: dict = {}
    if data_dir is not None and DataDir(data_dir).truth_json.is_file():
        truth = json.loads(DataDir(data_dir).truth_json.read_text())
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    atlas: list[dict] = []
    for r in manifest.iter_rows(named=True):
        uid = str(r[ID_COL])
        pts, source = None, None
        if uid in truth and "pose" in truth[uid]:
            pts, source = truth_points(truth[uid]), "truth"
        elif r.get("segmentation"):
            try:
                pts, source = segmentation_points(pre / r["segmentation"], seed=seed), "segmentation"
            except Exception as e:  # noqa: BLE001 - one unreadable segmentation must not stop the table
                log.warning("%s: segmentation unreadable (%s); no region target from it", uid, e)
        if not pts or len(pts) < min_locations:
            continue
        center, extent = _centre_extent(pts)
        rows.append({ID_COL: uid, "source": source, "n_locations": len(pts),
                     **{f"center_{a}": float(v) for a, v in zip("xyz", center)},
                     **{f"extent_{a}": float(v) for a, v in zip("xyz", extent)}})
        for loc, p in pts.items():
            keep = p if len(p) <= atlas_points else p[rng.choice(len(p), atlas_points, replace=False)]
            for d in keep - center:
                atlas.append({ID_COL: uid, "location": loc, "source": source,
                              "dx": float(d[0]), "dy": float(d[1]), "dz": float(d[2])})
    targets = _frame(rows)
    targets = pl.concat([targets, _localizer_targets(pre, targets, manifest)], how="vertical_relaxed")
    atlas_df = pl.DataFrame(atlas, schema={ID_COL: pl.Utf8, "location": pl.Utf8, "source": pl.Utf8,
                                           "dx": pl.Float64, "dy": pl.Float64, "dz": pl.Float64})
    atomic_write_parquet(targets, PreDir(pre).region_targets)
    atomic_write_parquet(atlas_df, PreDir(pre).region_atlas)
    counts = targets.group_by("source").len().sort("source").rows()
    log.info("region targets for %d of %d series (%s); atlas %d points", targets.height, manifest.height,
             ", ".join(f"{s}: {n}" for s, n in counts), atlas_df.height)
    return targets, atlas_df


def _frame(rows: list[dict]) -> pl.DataFrame:
    schema = {ID_COL: pl.Utf8, "source": pl.Utf8, "n_locations": pl.Int64,
              **{f"center_{a}": pl.Float64 for a in "xyz"}, **{f"extent_{a}": pl.Float64 for a in "xyz"}}
    return pl.DataFrame(rows, schema=schema)


def _localizer_targets(pre: Path, targets: pl.DataFrame, manifest: pl.DataFrame) -> pl.DataFrame:
    """Centres of positive series without a target, from their localizers minus each location's mean offset."""
    path = PreDir(pre).localizers
    if not path.is_file() or targets.height == 0:
        return _frame([])
    locs = pl.read_parquet(path).filter((pl.col("status") == "ok") & pl.col("world_x").is_not_null())
    if locs.height == 0:
        return _frame([])
    cen = targets.select(ID_COL, "center_x", "center_y", "center_z")
    known = locs.join(cen, on=ID_COL, how="inner")
    offsets = (known.with_columns(*(pl.col(f"world_{a}") - pl.col(f"center_{a}") for a in "xyz"))
               .group_by("location").agg(*(pl.col(f"world_{a}").mean().alias(f"o{a}") for a in "xyz")))
    todo = (locs.filter(~pl.col(ID_COL).is_in(targets[ID_COL].to_list())
                        & pl.col(ID_COL).is_in(manifest[ID_COL].to_list()))
            .join(offsets, on="location", how="inner"))
    if todo.height == 0:
        return _frame([])
    est = (todo.with_columns(*(pl.col(f"world_{a}") - pl.col(f"o{a}") for a in "xyz"))
           .group_by(ID_COL).agg(*(pl.col(f"world_{a}").mean().alias(f"center_{a}") for a in "xyz"),
                                 pl.len().alias("n_locations")))
    return _frame([{ID_COL: r[ID_COL], "source": "localizer", "n_locations": r["n_locations"],
                    **{f"center_{a}": r[f"center_{a}"] for a in "xyz"},
                    **{f"extent_{a}": None for a in "xyz"}} for r in est.iter_rows(named=True)])
