"""Patch cache: training patches cut once from the preprocessed volumes, then memory-mapped by every epoch.

Per series one patch set, named by a hash of its inputs (volume and mask file identity, the aneurysm points) and
the cache settings: ``entries/<key>.npy`` patches (N, D, H, W) float16, ``<key>.labels.npy`` (N, 14) uint8,
``<key>.mask.npy`` bit-packed sphere masks (N, ceil(D*H*W / 8)) and ``<key>.json`` (centres, kinds, the size
and CRC-32 of each file). The JSON is written last and every file goes to a temporary name first, so an entry
either is complete or is rebuilt; a truncated or altered file fails its size/checksum and is rebuilt too.
``index.parquet`` lists every patch with its series, fold, centre and labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from ..config import save_config, to_dict
from ..constants import ANEURYSM_PRESENT, ID_COL, LABEL_COLS, LOCATION_COLS, N_LABELS
from ..io.atomic import atomic_write_parquet, atomic_write_text
from ..io.tables import read_series_table
from ..layout import CacheDir, PreDir, read_region_targets
from .cache_config import CacheConfig
from .cache_entry import CACHE_VERSION, build_entry, check_entry
from .folds import resolve_folds, series_labels

log = logging.getLogger(__name__)


class CacheError(RuntimeError):
    """The preprocessed folder cannot feed the cache, or the cache folder is unusable."""


@dataclass
class SeriesTask:
    """Everything one worker needs to build one series' patch set."""

    uid: str
    volume: str
    mask: str | None
    points: list[list[float]]  # aneurysm centres, voxel (k, j, i)
    locations: list[int]  # index into LABEL_COLS of each point
    n_negatives: int
    key: str = ""
    region_center: list[float] | None = None  # voxel (k, j, i) of the region centre (cfg.region_box_mm)
    mined: list[list[float]] = field(default_factory=list)  # voxel (k, j, i) of mined false positives
    modality: str = ""  # the manifest's Modality (chooses bright or dark hard negatives)


@dataclass
class CacheResult:
    """What ``build_cache`` did: the index plus counts and the series it could not use (uid -> reason)."""

    index: pl.DataFrame
    built: int = 0
    reused: int = 0
    rebuilt_corrupt: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _file_identity(path: str | None) -> list | None:
    if path is None:
        return None
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def entry_key(task: SeriesTask, cfg: CacheConfig) -> str:
    """Hash of the series' inputs and the settings: the entry's file name."""
    payload = {"version": CACHE_VERSION, "uid": task.uid, "volume": _file_identity(task.volume),
               "mask": _file_identity(task.mask), "points": task.points, "locations": task.locations,
               "n_negatives": task.n_negatives, "modality": task.modality, "cfg": to_dict(cfg)}
    if task.region_center is not None:
        payload["region_center"] = [round(float(v), 3) for v in task.region_center]
    if task.mined:
        payload["mined"] = [[round(float(v), 2) for v in p] for p in task.mined]
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _read_table(path: Path) -> pl.DataFrame | None:
    if not path.exists():
        return None
    return pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema_length=10000)


def plan_cache(pre_dir: str | Path, cfg: CacheConfig) -> tuple[list[SeriesTask], dict[str, str], pl.DataFrame]:
    """Tasks for every usable series of the preprocessed folder, the skipped ones (uid -> reason), the series table.

    A positive series whose aneurysms could not all be mapped to voxels gets positives only (no negatives,
    which could contain the unmapped aneurysm); one with none mapped is skipped.
    """
    pre = Path(pre_dir)
    manifest = _read_table(PreDir(pre).manifest)
    if manifest is None:
        raise CacheError(f"{pre}: no manifest.parquet (run `rsna-aneurysm preprocess` first)")
    labels_path = PreDir(pre).train_csv  # validated (TableError): unique safe UIDs, labels 0/1
    labels = read_series_table(labels_path) if labels_path.exists() else None
    locs = _read_table(PreDir(pre).localizers)
    skipped: dict[str, str] = {}
    ok = manifest.filter((pl.col("status") == "ok") & pl.col("volume").is_not_null())
    for r in manifest.filter(~pl.col(ID_COL).is_in(ok[ID_COL].to_list())).iter_rows(named=True):
        skipped[str(r[ID_COL])] = f"preprocessing {r.get('status')}: {r.get('error')}"
    present: dict[str, int] = {}
    if labels is not None and ANEURYSM_PRESENT in labels.columns:
        present = {str(u): int(v or 0) for u, v in zip(labels[ID_COL], labels[ANEURYSM_PRESENT])}
    points: dict[str, list[tuple[list[float], int]]] = {}
    unmapped: dict[str, int] = {}
    # A mapped point outside its preprocessed grid (e.g. cropped away with the air around the head) would be a
    # positive patch of empty space: it counts as unmapped.
    shapes = dict(zip(ok[ID_COL].cast(pl.Utf8), ok["shape_kji"].to_list())) if "shape_kji" in ok.columns else {}
    if locs is not None and len(locs) and {"i", "j", "k", "location"} <= set(locs.columns):
        for r in locs.iter_rows(named=True):
            uid = str(r[ID_COL])
            good = r.get("status", "ok") == "ok" and None not in (r["i"], r["j"], r["k"])
            if good and shapes.get(uid) is not None:
                kji = np.array([r["k"], r["j"], r["i"]], dtype=np.float64)
                good = bool(np.all(np.isfinite(kji) & (kji >= -0.5) & (kji <= np.asarray(shapes[uid]) - 0.5)))
                if not good:
                    log.warning("%s: %s localizer at voxel (k, j, i) %s is outside the preprocessed volume %s: "
                                "not used", uid, r["location"], np.round(kji, 1).tolist(), list(shapes[uid]))
            if not good or r["location"] not in LOCATION_COLS:
                unmapped[uid] = unmapped.get(uid, 0) + 1
                continue
            points.setdefault(uid, []).append(([float(r["k"]), float(r["j"]), float(r["i"])],
                                               LABEL_COLS.index(r["location"])))
    tasks: list[SeriesTask] = []
    for r in ok.iter_rows(named=True):
        uid = str(r[ID_COL])
        pts = points.get(uid, [])
        if present.get(uid, 0) and not pts:
            skipped[uid] = "positive series without a mapped aneurysm location"
            continue
        mask = str(pre / r["mask"]) if r.get("mask") else None
        tasks.append(SeriesTask(uid, str(pre / r["volume"]), mask, [p for p, _ in pts], [loc for _, loc in pts],
                                n_negatives=0 if unmapped.get(uid) else -1, modality=str(r.get("Modality") or "")))
    if cfg.region_box_mm is not None:
        _attach_region_centres(pre, tasks, manifest)
    if cfg.mined_negatives:
        _attach_mined(Path(cfg.mined_negatives), tasks, manifest)
    n_points = sum(len(t.points) for t in tasks)
    per_series = int(round(cfg.negative_ratio * cfg.positives_per_aneurysm * n_points / max(len(tasks), 1)))
    for t in tasks:
        if t.n_negatives < 0:
            t.n_negatives = max(cfg.min_negatives_per_series, per_series)
        else:
            log.warning("%s: %d aneurysm location(s) not mapped: positives only", t.uid, unmapped[t.uid])
        t.key = entry_key(t, cfg)
    series = ok.select(pl.col(ID_COL).cast(pl.Utf8), *(["Modality"] if "Modality" in ok.columns else []))
    series = series.with_columns(pl.Series(ANEURYSM_PRESENT, [present.get(u, 0) for u in series[ID_COL]]))
    return tasks, skipped, series


def _attach_region_centres(pre: Path, tasks: list[SeriesTask], manifest: pl.DataFrame) -> None:
    """Region centre of each task, as a voxel of its preprocessed volume (world -> index through the volume's grid)."""
    targets = {r[ID_COL]: r for r in read_region_targets(pre).iter_rows(named=True)}
    geo = {str(r[ID_COL]): r for r in manifest.iter_rows(named=True)}
    missing = []
    for t in tasks:
        r, g = targets.get(t.uid), geo.get(t.uid)
        if r is None or g is None or g.get("origin") is None:
            missing.append(t.uid)
            continue
        kji = _voxel_of(g, np.array([[r["center_x"], r["center_y"], r["center_z"]]]))[0]
        if not np.all((kji >= -0.5) & (kji <= np.asarray(g["shape_kji"], dtype=np.float64) - 0.5)):
            log.warning("%s: region centre outside the volume; negatives from the whole head", t.uid)
            continue
        t.region_center = [float(v) for v in kji]
    if missing:
        log.warning("%d series without a region target: their negatives come from the whole head (%s)",
                    len(missing), ", ".join(missing[:5]))


def _voxel_of(row: dict, world: np.ndarray) -> np.ndarray:
    """World points (N, 3) -> continuous voxel indices (N, 3) in (k, j, i) of a manifest row's volume."""
    from ..volume import Volume

    vol = Volume(array=np.empty((0, 0, 0)), spacing=tuple(row["spacing_ijk"]), origin=tuple(row["origin"]))
    return vol.world_to_index(np.asarray(world, dtype=np.float64).reshape(-1, 3))[:, ::-1]


def _attach_mined(path: Path, tasks: list[SeriesTask], manifest: pl.DataFrame) -> None:
    """Mined false positives of each task's series, as voxels of its preprocessed volume."""
    if not path.is_file():
        raise CacheError(f"cache.mined_negatives: {path} does not exist (run `rsna-aneurysm mine` first)")
    mined = pl.read_parquet(path)
    need = {ID_COL, "world_x", "world_y", "world_z"}
    if not need <= set(mined.columns):
        raise CacheError(f"{path}: needs columns {sorted(need)}, has {mined.columns}")
    geo = {str(r[ID_COL]): r for r in manifest.iter_rows(named=True)}
    by_uid = {u: g.select("world_x", "world_y", "world_z").to_numpy()
              for (u,), g in mined.group_by(ID_COL)}
    for t in tasks:
        pts = by_uid.get(t.uid)
        if pts is None or t.uid not in geo or geo[t.uid].get("origin") is None:
            continue
        shape = np.asarray(geo[t.uid]["shape_kji"], dtype=np.float64)
        kji = _voxel_of(geo[t.uid], pts)
        inside = np.all((kji >= -0.5) & (kji <= shape - 0.5), axis=1)
        t.mined = [[float(v) for v in p] for p in kji[inside]]
    log.info("mined negatives: %d positions in %d series from %s", sum(len(t.mined) for t in tasks),
             sum(bool(t.mined) for t in tasks), path)


def _work(args: tuple[SeriesTask, CacheConfig, str]) -> tuple[str, dict | None, str]:
    task, cfg, entries_dir = args
    try:
        return task.uid, build_entry(task, cfg, entries_dir), ""
    except Exception as e:  # one broken series must not stop the cache: report it
        return task.uid, None, f"{type(e).__name__}: {e}"


def _index_rows(meta: dict) -> dict[str, list]:
    centers = np.asarray(meta["centers"], dtype=np.int64).reshape(-1, 3)
    labels = np.asarray(meta["labels"], dtype=np.uint8).reshape(-1, N_LABELS)
    cols: dict[str, list] = {ID_COL: [meta[ID_COL]] * meta["n"], "entry": [meta["key"]] * meta["n"],
                             "row": list(range(meta["n"])), "kind": list(meta["kinds"]),
                             "center_k": centers[:, 0].tolist(), "center_j": centers[:, 1].tolist(),
                             "center_i": centers[:, 2].tolist()}
    for c, name in enumerate(LABEL_COLS):
        cols[name] = labels[:, c].tolist()
    return cols


def build_cache(pre_dir: str | Path, out_dir: str | Path, cfg: CacheConfig | None = None, workers: int = 1,
                folds: str | Path | None = None, n_folds: int = 5, fold_seed: int = 42, verify: bool = True,
                progress: bool = True) -> CacheResult:
    """Build (or complete) the patch cache of ``pre_dir`` in ``out_dir``; intact entries are reused.

    Runs ``workers`` processes, each holding one volume at a time (bounded memory); a series that fails is
    logged and left out. Writes ``index.parquet``, ``cache_config.json`` and ``report.json`` in ``out_dir``.
    """
    t0 = time.perf_counter()
    cfg = cfg or CacheConfig()
    out = Path(out_dir)
    entries = out / "entries"
    tasks, skipped, series = plan_cache(pre_dir, cfg)  # first: an unusable input table writes nothing
    entries.mkdir(parents=True, exist_ok=True)
    for uid, why in skipped.items():
        log.warning("cache: skipping %s: %s", uid, why)
    result = CacheResult(index=pl.DataFrame(), skipped=skipped)
    metas: dict[str, dict] = {}
    todo: list[SeriesTask] = []
    for t in tasks:
        meta, why = check_entry(entries, t.key, verify)
        if meta is not None:
            metas[t.uid] = meta
        else:
            if why != "missing":
                log.warning("cache: %s entry %s rebuilt: %s", t.uid, t.key, why)
                result.rebuilt_corrupt += 1
            todo.append(t)
    result.reused = len(metas)
    log.info("cache: %d series to build, %d reused", len(todo), result.reused)
    jobs = [(t, cfg, str(entries)) for t in todo]
    bar = tqdm(total=len(jobs), desc="cache", unit="series", disable=not (progress and sys.stderr.isatty()))
    pool = None
    if workers <= 1 or len(jobs) <= 1:
        results = map(_work, jobs)
    else:
        # spawn: safe when the caller already runs torch/CUDA threads; each worker holds one volume at a time.
        pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                                   max_tasks_per_child=50)
        results = (f.result() for f in as_completed([pool.submit(_work, j) for j in jobs]))
    try:
        for uid, meta, err in results:
            bar.update(1)
            if meta is None:
                log.error("cache: %s failed: %s", uid, err)
                result.failed[uid] = err
            else:
                metas[uid] = meta
                result.built += 1
    except BrokenProcessPool as e:
        raise CacheError(f"a cache worker process died ({e}); out of memory? Try fewer workers. Finished "
                         f"entries are kept: a rerun continues.") from e
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    result.index = _write_index(out, metas, series, folds, n_folds, fold_seed)
    save_config(cfg, CacheDir(out).config)
    result.seconds = time.perf_counter() - t0
    report = {k: v for k, v in asdict(result).items() if k != "index"} | {"pre_dir": str(Path(pre_dir).resolve()),
                                                                         "n_patches": len(result.index)}
    _write_json(CacheDir(out).report, report)
    log.info("cache: %d built, %d reused, %d failed, %d skipped, %d patches in %.1f s", result.built, result.reused,
             len(result.failed), len(skipped), len(result.index), result.seconds)
    return result


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def _write_index(out: Path, metas: dict[str, dict], series: pl.DataFrame, folds: str | Path | None, n_folds: int,
                 fold_seed: int) -> pl.DataFrame:
    cols: dict[str, list] = {}
    for uid in sorted(metas):
        for k, v in _index_rows(metas[uid]).items():
            cols.setdefault(k, []).extend(v)
    schema = {ID_COL: pl.Utf8, "entry": pl.Utf8, "row": pl.Int64, "kind": pl.Utf8, "center_k": pl.Int64,
              "center_j": pl.Int64, "center_i": pl.Int64, **{c: pl.UInt8 for c in LABEL_COLS}}
    index = pl.DataFrame(cols or None, schema=schema)
    fold_table = resolve_folds(series_labels(index), folds, n_folds, fold_seed)
    index = index.join(fold_table, on=ID_COL, how="left").with_columns(pl.col("fold").fill_null(-1))
    index = index.select(ID_COL, "fold", *[c for c in index.columns if c not in (ID_COL, "fold")])
    atomic_write_parquet(index, CacheDir(out).index)
    return index


def read_index(cache_dir: str | Path) -> pl.DataFrame:
    """The cache's patch index; raises CacheError naming the folder when it was never built."""
    path = CacheDir(cache_dir).index
    if not path.exists():
        raise CacheError(f"{cache_dir}: no index.parquet (run `rsna-aneurysm cache` first)")
    return pl.read_parquet(path)
