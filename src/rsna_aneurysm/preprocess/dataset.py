"""Preprocess a whole competition folder: parallel, resumable, atomic, and never stopped by one broken series.

Each series ends in a sidecar ``records/<uid>.json`` written last (atomically): its presence with the current
config digest marks the series done, so an interrupted run loses at most the series in flight, and a rerun skips
everything finished. The manifest and the localizer table are rebuilt from the sidecars at the end.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from ..config import save_config
from ..constants import ID_COL, LOCALIZER_COLS
from ..io.atomic import atomic_write_csv, atomic_write_parquet, atomic_write_text
from ..io.dicom import load_series
from ..io.nifti import read_volume, write_volume
from ..io.tables import read_localizers_table, read_series_table, read_train_table
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
        if p.exists():  # validated once here (TableError): unique safe UIDs, labels 0/1, known modalities
            return read_train_table(p) if name == "train.csv" else read_series_table(p)
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


# Test-only hook: a worker whose series uid equals this variable kills itself with SIGKILL (as the OOM killer
# would). Read in the worker (monkeypatching does not cross spawn); never set it outside tests.
TEST_KILL_ENV = "RSNA_TEST_KILL_UID"


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _worker_init() -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # one process per core already
    # A SIGKILLed main process cannot clean up: each worker polls its parent pid and exits once it changes
    # (reparented). Chosen over prctl(PR_SET_PDEATHSIG), which fires on the death of the parent *thread* that
    # spawned the worker (the executor may spawn from a helper thread) and is Linux-only.
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True, name="parent-watch").start()


def _run_task(uid: str, *args) -> dict:
    if os.environ.get(TEST_KILL_ENV) == uid:  # test-only, see TEST_KILL_ENV
        os.kill(os.getpid(), signal.SIGKILL)
    return process_one(uid, *args)


def _solo_task(args: tuple) -> None:
    _worker_init()
    _run_task(*args)  # writes its record itself


def _death_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "unknown exit"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = str(-exitcode)
        why = f"killed by signal {-exitcode} ({name})"
        return why + (" (out of memory?)" if -exitcode == signal.SIGKILL else "")
    return f"exit code {exitcode}"


def _died_record(args: tuple, reason: str, seconds: float, error: str | None = None) -> dict:
    """Write (and return) the error record of a series whose worker gave no record, shaped like process_one's."""
    uid, modality, _data_dir, out_dir, cfg, _locs = args
    error = error or f"worker died: {reason}"
    rec = {ID_COL: uid, "Modality": modality, "status": "error", "error": error, "volume": None,
           "mask": None, "segmentation": None, "config_digest": cfg.digest(), "localizers": [], "seconds": seconds}
    _write_json(out_dir / "records" / f"{uid}.json", rec)
    return rec


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel what is queued and terminate its workers (also when it is broken)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)
    pool.shutdown(wait=True)


def _run_solo(ctx, args: tuple) -> dict:
    """Rerun one series alone in a fresh process; if that dies too, the series gets a 'worker died' record."""
    uid, out_dir = args[0], args[3]
    t0 = time.perf_counter()
    rec_path = out_dir / "records" / f"{uid}.json"
    rec_path.unlink(missing_ok=True)
    p = ctx.Process(target=_solo_task, args=(args,), name=f"preprocess-{uid}")
    p.start()
    try:
        p.join()
    finally:
        if p.is_alive():
            p.terminate()
            p.join(5)
    if p.exitcode == 0 and rec_path.exists():
        return json.loads(rec_path.read_text())
    return _died_record(args, _death_reason(p.exitcode), time.perf_counter() - t0)


def _run_pool(todo: list[tuple], workers: int, bar: tqdm) -> None:
    """One future per series, at most ``workers`` in flight. When a worker dies, every in-flight future breaks:
    those series are rerun one at a time alone (the one that dies again is recorded), the pool is rebuilt."""
    # spawn, not fork: polars and SimpleITK hold thread pools that a forked child can deadlock on.
    ctx = mp.get_context("spawn")
    queue = list(reversed(todo))
    pool: ProcessPoolExecutor | None = None
    try:
        while queue:
            pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, mp_context=ctx)
            running: dict[Future, tuple] = {}
            suspects: list[tuple] = []
            while queue or running:
                while queue and len(running) < workers and not suspects:
                    args = queue.pop()
                    try:
                        running[pool.submit(_run_task, *args)] = args
                    except BrokenProcessPool:
                        suspects.append(args)
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    args = running.pop(fut)
                    try:
                        rec = fut.result()
                    except BrokenProcessPool:
                        suspects.append(args)
                        continue
                    except Exception as e:  # e.g. an unpicklable result: record it like process_one would
                        rec = _died_record(args, "", 0.0, error=f"{type(e).__name__}: {e}")
                    _report(rec, bar)
                if suspects and not running:
                    break
            _kill_pool(pool)
            pool = None
            for args in suspects:
                log.warning("%s: a worker died; rerunning it alone", args[0])
                _report(_run_solo(ctx, args), bar)
    finally:
        if pool is not None:  # a solo run cleans up after itself (_run_solo); other children are not ours
            _kill_pool(pool)


def _raise_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def preprocess_dataset(data_dir: str | Path, out_dir: str | Path, cfg: PreprocessConfig | None = None,
                       workers: int = 1, retry_errors: bool = True, limit: int | None = None,
                       progress: bool = True) -> pl.DataFrame:
    """Preprocess every series of ``data_dir`` (train.csv, else test.csv, else series/) into ``out_dir``.

    Returns the manifest (also written as ``manifest.parquet``); localizers go to ``localizers.parquet``.
    A worker that dies (OOM killer) costs only its series an error record; the manifest is written even when the
    run is interrupted (then the exception is re-raised), and no worker process outlives the call.
    """
    cfg = cfg or PreprocessConfig()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    table = _series_table(data_dir)
    loc_path = DataDir(data_dir).localizers_csv
    locs: dict[str, list[dict]] = {}
    if loc_path.exists():  # validated (TableError) before anything is written
        for r in read_localizers_table(loc_path, series=table[ID_COL].to_list()).iter_rows(named=True):
            locs.setdefault(r[ID_COL], []).append(r)
    if limit is not None:
        table = table.head(limit)
    for sub in ("records", "volumes", "masks", "segmentations"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    save_config(cfg, PreDir(out_dir).config)

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

    # SIGTERM becomes SystemExit so the finally blocks below stop the workers and write the manifest.
    term_installed, old_term = False, None
    if workers > 1 and threading.current_thread() is threading.main_thread():
        old_term, term_installed = signal.signal(signal.SIGTERM, _raise_on_sigterm), True
    bar = tqdm(total=len(todo), desc="preprocess", unit="series", disable=not progress)
    try:
        if workers <= 1:
            for args in todo:
                _report(process_one(*args), bar)
        elif todo:
            _run_pool(todo, workers, bar)
    except BaseException:
        bar.close()
        try:  # write what is there, then re-raise (KeyboardInterrupt included)
            write_tables(data_dir, out_dir, table, digest)
        except Exception:
            log.exception("preprocess: writing the manifest after an interruption failed")
        raise
    finally:
        if term_installed:  # None: the old handler was not set from Python; the default is the best guess
            signal.signal(signal.SIGTERM, signal.SIG_DFL if old_term is None else old_term)
        # The multiprocessing resource tracker is left alone: it is shared by the whole process (stopping it would
        # unlink semaphores other pools still use) and exits with this process, or with the last worker.
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
            df = read_train_table(src) if name == "train.csv" else read_series_table(src)
            atomic_write_csv(df.filter(pl.col(ID_COL).cast(pl.Utf8).is_in(manifest[ID_COL].to_list())), out_dir / name)
    n_ok = int((manifest["status"] == "ok").sum())
    log.info("preprocess: %d ok, %d failed; manifest %s", n_ok, len(manifest) - n_ok, PreDir(out_dir).manifest)
    return manifest

