"""A worker killed mid-series (as by the OOM killer) costs only that series an error record."""

from __future__ import annotations

import json
import time

import polars as pl
import psutil
import pytest

from rsna_aneurysm.constants import ID_COL
from rsna_aneurysm.data.synth import generate_dataset
from rsna_aneurysm.preprocess.dataset import TEST_KILL_ENV, preprocess_dataset
from rsna_aneurysm.preprocess.pipeline import PreprocessConfig


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_dead")
    generate_dataset(out, n_series=4, preset="tiny", seed=11, n_test=0)
    return out


def _alive(p: psutil.Process, tracker_too: bool = False) -> bool:
    try:  # the process-wide multiprocessing resource tracker is not a worker: it lives as long as this process
        return p.status() != psutil.STATUS_ZOMBIE and (tracker_too or "resource_tracker" not in " ".join(p.cmdline()))
    except psutil.NoSuchProcess:
        return False


def _no_children() -> list:
    deadline = time.monotonic() + 5
    while True:
        kids = [p for p in psutil.Process().children(recursive=True) if _alive(p)]
        if not kids or time.monotonic() > deadline:
            return kids
        time.sleep(0.1)


def test_dead_worker_gets_a_record_and_the_run_goes_on(small_data, tmp_path, monkeypatch):
    uids = pl.read_csv(small_data / "train.csv")[ID_COL].cast(pl.Utf8).to_list()
    victim = uids[1]
    monkeypatch.setenv(TEST_KILL_ENV, victim)  # inherited by the spawned workers
    cfg = PreprocessConfig(spacing=(3.0, 3.0, 3.0))
    out = tmp_path / "pre"
    assert _no_children() == []

    manifest = preprocess_dataset(small_data, out, cfg, workers=2, progress=False)
    assert sorted(manifest[ID_COL].to_list()) == sorted(uids)
    assert (out / "manifest.parquet").exists()
    bad = manifest.filter(pl.col(ID_COL) == victim)
    assert bad["status"][0] == "error"
    assert bad["error"][0].startswith("worker died: killed by signal 9") and "out of memory?" in bad["error"][0]
    assert bad["config_digest"][0] == cfg.digest()
    assert (manifest.filter(pl.col(ID_COL) != victim)["status"] == "ok").all()
    rec = json.loads((out / "records" / f"{victim}.json").read_text())
    assert rec["status"] == "error" and rec["localizers"] == []
    assert _no_children() == []

    # A rerun (retry_errors) retries the killer once, records it again and still finishes; the rest is skipped.
    stamp = {p: p.stat().st_mtime_ns for p in (out / "volumes").iterdir()}
    again = preprocess_dataset(small_data, out, cfg, workers=2, progress=False)
    assert sorted(again[ID_COL].to_list()) == sorted(uids)
    assert again.filter(pl.col(ID_COL) == victim)["error"][0].startswith("worker died:")
    assert (again.filter(pl.col(ID_COL) != victim)["status"] == "ok").all()
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())
    assert _no_children() == []

    # Once the series is healthy again, the rerun repairs it.
    monkeypatch.delenv(TEST_KILL_ENV)
    fixed = preprocess_dataset(small_data, out, cfg, workers=2, progress=False)
    assert (fixed["status"] == "ok").all()
    assert _no_children() == []


def test_interrupted_run_still_writes_the_manifest(small_data, tmp_path, monkeypatch):
    import rsna_aneurysm.preprocess.dataset as ds

    cfg = PreprocessConfig(spacing=(3.0, 3.0, 3.0))
    out = tmp_path / "pre"
    calls = {"n": 0}
    real = ds._report

    def interrupt_after_first(rec, bar):
        real(rec, bar)
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(ds, "_report", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        preprocess_dataset(small_data, out, cfg, workers=2, progress=False)
    assert calls["n"] == 1
    manifest = pl.read_parquet(out / "manifest.parquet")
    assert len(manifest) >= 1 and (manifest["status"] == "ok").all()
    assert _no_children() == []


_ORPHAN_SCRIPT = """
import os, sys, time, multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from rsna_aneurysm.preprocess.dataset import _worker_init

def nap():
    time.sleep(0.3)
    return os.getpid()

if __name__ == "__main__":
    pool = ProcessPoolExecutor(2, initializer=_worker_init, mp_context=mp.get_context("spawn"))
    pids = {f.result() for f in [pool.submit(nap) for _ in range(4)]}  # both workers are up and initialised
    for _ in range(2):
        pool.submit(time.sleep, 60)
    print(" ".join(map(str, sorted(pids))), flush=True)
    time.sleep(60)
"""


def test_workers_exit_when_the_main_process_is_sigkilled(tmp_path):
    """SIGKILL of the main process cannot be handled in it: the workers watch their parent and leave (and with
    them the resource tracker, whose pipe they hold)."""
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "orphan_main.py"
    script.write_text(_ORPHAN_SCRIPT)
    main = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in main.stdout.readline().split()]
        assert pids, "the pool did not start"
        family = psutil.Process(main.pid).children(recursive=True)  # workers and the resource tracker
        assert {p.pid for p in family} >= set(pids)
    finally:
        os.kill(main.pid, signal.SIGKILL)
        main.wait(10)
        main.stdout.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [p for p in family if _alive(p, tracker_too=True)]
        if not left:
            break
        time.sleep(0.2)
    for p in left:  # do not leak them into the rest of the session, but fail
        p.kill()
    assert left == [], f"outlived a SIGKILLed parent: {left}"
