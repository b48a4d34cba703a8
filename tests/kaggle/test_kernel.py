"""The kernel's code file, run end to end off Kaggle: offline installs from the packaged datasets, the kit imported
from the code dataset's wheel, the predictor built from the weights dataset, the local gateway as the server."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from rsna_aneurysm.constants import ID_COL, LABEL_COLS
from rsna_aneurysm.data.synth import SeriesSpec, make_series
from rsna_aneurysm.kaggle.package import KaggleConfig, package


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


standin = _load("rsna_test_kaggle_standin", Path(__file__).with_name("kaggle_standin.py"))
weights_helper = _load("rsna_test_weights_helper", Path(__file__).parents[1] / "infer" / "weights_helper.py")


def _test_folder(root: Path) -> Path:
    specs = [SeriesSpec(modality="CTA"), SeriesSpec(modality="MRA", multiframe=True),
             SeriesSpec(modality="MRI T2", plane="sagittal")]
    uids = []
    for n, spec in enumerate(specs):
        uid = f"1.2.826.0.1.7777.{n}"
        spec = SeriesSpec(**{**spec.__dict__, "preset": "tiny", "test_tags_only": True, "seed": 10 + n})
        make_series(root / "series" / uid, spec, series_uid=uid, keep_volume=False)
        uids.append(uid)
    pl.DataFrame({ID_COL: uids}).write_csv(root / "test.csv")
    return root


def test_kernel_code_file_runs_through_the_local_gateway(tmp_path: Path) -> None:
    run = weights_helper.make_weights(tmp_path / "run", folds=(0, 1))
    standin.make_wheel(tmp_path / "extra")
    staging = tmp_path / "staging"
    package(run, KaggleConfig(owner="someone"), staging, download=False, wheel_dirs=[tmp_path / "extra"])
    test = _test_folder(tmp_path / "test")
    work = tmp_path / "working"
    work.mkdir()
    env = {**os.environ, "RSNA_INPUT_ROOT": str(staging / "datasets"), "RSNA_WORK_DIR": str(work),
           "RSNA_TEST_DATA": str(test), "RSNA_SUBMISSION": str(work / "submission.parquet"),
           "RSNA_SHARE_ROOT": str(tmp_path / "share"),
           "RSNA_PREDICTOR_OVERRIDES": json.dumps({"budget.total_seconds": 3600})}
    env.pop("RSNA_SKIP_INSTALL", None)
    env.pop("KAGGLE_IS_COMPETITION_RERUN", None)
    code = staging / "kernels" / "rsna-aneurysm-submit" / "submit.py"
    proc = subprocess.run([sys.executable, str(code)], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]

    # The kit came from the code dataset's wheel, installed offline, and the extra wheel went in beside it.
    site = work / "rsna_site"
    assert f"from {site}" in out
    assert (site / "rsna_aneurysm" / "infer" / "predictor.py").is_file()
    assert (site / "rsna_demo_extra" / "__init__.py").is_file()

    sub = pl.read_parquet(work / "submission.parquet")
    assert sub.columns == [ID_COL, *LABEL_COLS]
    assert sorted(sub[ID_COL].to_list()) == sorted(pl.read_csv(test / "test.csv")[ID_COL].to_list())
    summary = json.loads(out.split("predictor summary: ", 1)[1].splitlines()[0])
    assert summary["predicted"] == 3 and summary["fallback"] == 0
    assert not (tmp_path / "share").exists() or not any((tmp_path / "share").iterdir())


def test_kernel_code_file_says_what_is_missing(tmp_path: Path) -> None:
    code = Path(__file__).parents[2] / "kernels" / "rsna-aneurysm-submit" / "submit.py"
    if not code.is_file():
        pytest.skip("kernel folder not found beside the tests")
    env = {**os.environ, "RSNA_INPUT_ROOT": str(tmp_path), "RSNA_WORK_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(code)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "attach the code dataset" in proc.stderr
