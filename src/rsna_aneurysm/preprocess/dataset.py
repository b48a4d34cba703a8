"""Preprocess a whole competition folder: parallel, resumable, atomic, and never stopped by one broken series.

Each series ends in a sidecar ``records/<uid>.json`` written last (atomically): its presence with the current
config digest marks the series done, so an interrupted run loses at most the series in flight, and a rerun skips
everything finished. The manifest and the localizer table are rebuilt from the sidecars at the end.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from ..config import save_config
from ..constants import ID_COL, LOCALIZER_COLS
from ..io.atomic import atomic_write_csv, atomic_write_parquet, atomic_write_text
from ..io.dicom import load_series
from ..io.nifti import read_volume, write_volume
from ..layout import DataDir, PreDir
from .annotations import map_localizers
from .geometry import resample
from .pipeline import PreprocessConfig, preprocess_volume

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = {
    ID_COL: pl.Utf8, "Modality": pl.Utf8, "status": pl.Utf8, "error": pl.Utf8, "volume": pl.Utf8, "mask": pl.Utf8,
    "segmentation": pl.Utf8, "shape_kji": pl.List(pl.Int64), "spacing_ijk": pl.List(pl.Float64),
    "origin": pl.List(pl.Float64), "source_shape_ijk": pl.List(pl.Int64), "source_spacing_ijk": pl.List(pl.Float64),
    "source_orientation": pl.Utf8, "spacing_guessed": pl.Boolean, "irregular_spacing": pl.Boolean,
    "warnings": pl.Utf8, "seconds": pl.Float64, "config_digest": pl.Utf8,
}


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, default=float))


def _series_table(data_dir: Path) -> pl.DataFrame:
    for name in ("train.csv", "test.csv"):
        p = data_dir / name
        if p.exists():
            df = pl.read_csv(p, infer_schema_length=10000)
            if ID_COL not in df.columns:
                raise ValueError(f"{p}: no {ID_COL} column")
            return df
    series = data_dir / "series"
    if not series.is_dir():
        raise FileNotFoundError(f"{data_dir}: neither train.csv, test.csv nor a series/ folder")
    return pl.DataFrame({ID_COL: sorted(p.name for p in series.iterdir() if p.is_dir())})


def process_one(uid: str, modality: str | None, data_dir: Path, out_dir: Path, cfg: PreprocessConfig,
                localizers: list[dict]) -> dict:
    """Preprocess one series; returns its record (also written as the sidecar). Never raises."""
    import time

    t0 = time.perf_counter()
    rec: dict = {ID_COL: uid, "Modality": modality, "status": "ok", "error": None, "volume": None, "mask": None,
                 "segmentation": None, "config_digest": cfg.digest(), "localizers": []}
    try:
        src = load_series(data_dir / "series" / uid, modality=modality)
        rec.update(source_shape_ijk=list(src.shape_ijk), source_spacing_ijk=list(src.spacing),
                   source_orientation=src.orientation_code(), spacing_guessed=bool(src.meta["spacing_guessed"]),
                   irregular_spacing=bool(src.meta["irregular_spacing"]), warnings="; ".join(src.meta["warnings"]))
        if localizers:
            rows = pl.DataFrame(localizers, schema={c: pl.Utf8 for c in LOCALIZER_COLS})
            mapped = map_localizers(src, rows)
        vol, mask = preprocess_volume(src, cfg)
        del src
        rec.update(shape_kji=list(vol.array.shape), spacing_ijk=list(vol.spacing), origin=list(vol.origin))
        if localizers:
            ok = mapped["status"] == "ok"
            world = mapped.select("world_x", "world_y", "world_z").to_numpy()
            ijk = np.full_like(world, np.nan)
            if ok.any():
                ijk[ok.to_numpy()] = vol.world_to_index(world[ok.to_numpy()])
            mapped = mapped.with_columns(i=pl.Series(ijk[:, 0]), j=pl.Series(ijk[:, 1]), k=pl.Series(ijk[:, 2]))
            mapped = mapped.with_columns([pl.when(ok).then(pl.col(c)).otherwise(None).alias(c) for c in "ijk"])
            rec["localizers"] = mapped.to_dicts()
            bad = mapped.filter(~ok)
            for r in bad.iter_rows(named=True):
                log.warning("%s: localizer not mapped: %s", uid, r["status"])
        if cfg.write_nifti:
            write_volume(vol, out_dir / "volumes" / f"{uid}.nii.gz", dtype=cfg.volume_dtype)
            rec["volume"] = f"volumes/{uid}.nii.gz"
            if mask is not None:
                write_volume(mask, out_dir / "masks" / f"{uid}.nii.gz", dtype=np.uint8)
                rec["mask"] = f"masks/{uid}.nii.gz"
            seg_path = data_dir / "segmentations" / uid / f"{uid}_cowseg.nii"
            if seg_path.exists():
                seg = resample(read_volume(seg_path), interpolator="nearest", reference=vol, default_value=0,
                               dtype=np.uint8)
                write_volume(seg, out_dir / "segmentations" / f"{uid}.nii.gz", dtype=np.uint8)
                rec["segmentation"] = f"segmentations/{uid}.nii.gz"
    except Exception as e:  # one broken series must not stop the dataset: record why
        rec.update(status="error", error=f"{type(e).__name__}: {e}")
        log.debug("%s failed:\n%s", uid, traceback.format_exc())
    rec["seconds"] = time.perf_counter() - t0
    _write_json(out_dir / "records" / f"{uid}.json", rec)
    return rec


def _worker_init() -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # one process per core already


def preprocess_dataset(data_dir: str | Path, out_dir: str | Path, cfg: PreprocessConfig | None = None,
                       workers: int = 1, retry_errors: bool = True, limit: int | None = None,
                       progress: bool = True) -> pl.DataFrame:
    """Preprocess every series of ``data_dir`` (train.csv, else test.csv, else series/) into ``out_dir``.

    Returns the manifest (also written as ``manifest.parquet``); localizers go to ``localizers.parquet``.
    """
    cfg = cfg or PreprocessConfig()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    table = _series_table(data_dir)
    if limit is not None:
        table = table.head(limit)
    for sub in ("records", "volumes", "masks", "segmentations"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    save_config(cfg, PreDir(out_dir).config)
    loc_path = DataDir(data_dir).localizers_csv
    locs: dict[str, list[dict]] = {}
    if loc_path.exists():
        for r in pl.read_csv(loc_path, infer_schema_length=0).iter_rows(named=True):
            locs.setdefault(r[ID_COL], []).append(r)

    digest = cfg.digest()
    todo, done = [], 0
    for r in table.iter_rows(named=True):
        uid = str(r[ID_COL])
        rec_path = out_dir / "records" / f"{uid}.json"
        if rec_path.exists():
            try:
                old = json.loads(rec_path.read_text())
            except (json.JSONDecodeError, OSError):
                old = {}
            if old.get("config_digest") == digest and (old.get("status") == "ok" or not retry_errors):
                done += 1
                continue
        todo.append((uid, r.get("Modality"), data_dir, out_dir, cfg, locs.get(uid, [])))
    log.info("preprocess: %d series to do, %d already done (config %s)", len(todo), done, digest)

    bar = tqdm(total=len(todo), desc="preprocess", unit="series", disable=not progress)
    if workers <= 1:
        for args in todo:
            _report(process_one(*args), bar)
    else:
        # spawn, not fork: polars and SimpleITK hold thread pools that a forked child can deadlock on.
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, mp_context=ctx) as pool:
            for rec in pool.map(process_one, *zip(*todo), chunksize=1) if todo else []:
                _report(rec, bar)
    bar.close()
    return write_tables(data_dir, out_dir, table, digest)


def _report(rec: dict, bar: tqdm) -> None:
    if rec["status"] != "ok":
        log.error("%s: %s", rec[ID_COL], rec["error"])
    bar.update(1)


def write_tables(data_dir: Path, out_dir: Path, table: pl.DataFrame, digest: str) -> pl.DataFrame:
    """Rebuild manifest.parquet, localizers.parquet and train.csv from the sidecar records."""
    recs, loc_rows = [], []
    for uid in table[ID_COL].cast(pl.Utf8):
        p = out_dir / "records" / f"{uid}.json"
        if not p.exists():
            continue
        rec = json.loads(p.read_text())
        loc_rows.extend(rec.pop("localizers", []))
        recs.append({k: rec.get(k) for k in MANIFEST_SCHEMA})
    manifest = pl.DataFrame(recs, schema=MANIFEST_SCHEMA)
    atomic_write_parquet(manifest, PreDir(out_dir).manifest)
    if loc_rows:
        atomic_write_parquet(pl.DataFrame(loc_rows), PreDir(out_dir).localizers)
    elif DataDir(data_dir).localizers_csv.exists():
        empty = pl.DataFrame(schema={ID_COL: pl.Utf8, "location": pl.Utf8})
        atomic_write_parquet(empty, PreDir(out_dir).localizers)
    for name in ("train.csv", "test.csv"):
        src = data_dir / name
        if src.exists():
            df = pl.read_csv(src, infer_schema_length=10000)
            atomic_write_csv(df.filter(pl.col(ID_COL).cast(pl.Utf8).is_in(manifest[ID_COL].to_list())), out_dir / name)
    n_ok = int((manifest["status"] == "ok").sum())
    log.info("preprocess: %d ok, %d failed; manifest %s", n_ok, len(manifest) - n_ok, PreDir(out_dir).manifest)
    return manifest

