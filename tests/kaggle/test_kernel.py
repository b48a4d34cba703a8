"""The kernel's code file, run end to end off Kaggle: offline installs from the packaged datasets, the kit imported
from the code dataset's wheel, the predictor built from the weights dataset, the local gateway as the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kaggle_standin as standin
import polars as pl
import pytest
import weights_helper

from rsna_aneurysm.constants import ID_COL, LABEL_COLS
from rsna_aneurysm.data.synth import SeriesSpec, make_series
from rsna_aneurysm.kaggle.package import KaggleConfig, package


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


@pytest.mark.parametrize("pipeline", ["two-stage", "whole-scan", "vessel-roi"])
def test_kernel_code_file_runs_through_the_local_gateway(tmp_path: Path, pipeline: str) -> None:
    if pipeline == "vessel-roi":  # a vessel-ROI run: segmenter, ROI classifiers, region finder as its fallback
        run = weights_helper.make_vessel_roi_weights(tmp_path / "run", folds=(0, 1))
        weights_helper.add_region(run)
    else:
        run = weights_helper.make_weights(tmp_path / "run", folds=(0, 1))
    if pipeline == "two-stage":  # the default whenever the weights carry stage one
        weights_helper.add_region(run)
    standin.make_wheel(tmp_path / "extra")
    staging = tmp_path / "staging"
    package(run, KaggleConfig(owner="someone"), staging, download=False, wheel_dirs=[tmp_path / "extra"])
    test = _test_folder(tmp_path / "test")
    work = tmp_path / "working"
    work.mkdir()
    env = {**os.environ, "RSNA_INPUT_ROOT": str(staging / "datasets"), "RSNA_WORK_DIR": str(work),
           "RSNA_TEST_DATA": str(test), "RSNA_SUBMISSION": str(work / "submission.parquet"),
           "RSNA_SHARE_ROOT": str(tmp_path / "share"),
           "RSNA_PREDICTOR_OVERRIDES": json.dumps({"budget.total_seconds": 3600, "budget.expected_series": 3}),
           "RSNA_SUMMARY_EVERY": "1"}
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
    assert summary["predicted"] == 3 and summary["fallback"] == 0 and summary["timeouts"] == 0, summary
    assert all(f"predictor summary after {n} series" in out for n in (1, 2, 3))
    assert summary["pipeline"] == pipeline
    if pipeline == "two-stage":
        assert {"region.json", "region_finder.pt", "region_atlas.parquet"} <= {
            p.name for p in (staging / "datasets").glob("*weights*/*")}
        assert summary["region_fallbacks"] == 0 and summary["mean_s"]["region_s"] > 0
    if pipeline == "vessel-roi":
        assert {"roi.json", "vessels_segmenter.pt", "fold_0.pt", "fold_1.pt", "region_finder.pt"} <= {
            p.name for p in (staging / "datasets").glob("*weights*/*")}
        assert summary["mean_s"]["region_s"] > 0
    assert not (tmp_path / "share").exists() or not any((tmp_path / "share").iterdir())


FAKE_SERVER = """
import inspect, json, os
from pathlib import Path


class RSNAInferenceServer:
    def __init__(self, predict):
        if not inspect.isfunction(predict):  # what one release of the competition relay says
            raise ValueError("Endpoint listeners passed to serve must be functions")
        self.predict = predict

    def _run(self, how):
        series = sorted(p for p in Path(os.environ["FAKE_SERIES_ROOT"]).iterdir())
        rows = [self.predict(str(s)).row(0) for s in series]
        Path(os.environ["RSNA_WORK_DIR"], "fake_server.json").write_text(json.dumps({"how": how, "rows": rows}))

    def serve(self):
        self._run("serve")

    def run_local_gateway(self):
        self._run("run_local_gateway")
"""


def test_kernel_hands_the_predictor_to_the_competition_server(tmp_path: Path) -> None:
    run = weights_helper.make_weights(tmp_path / "run")
    staging = tmp_path / "staging"
    package(run, KaggleConfig(owner="someone"), staging, download=False)
    comp = staging / "datasets" / "rsna-intracranial-aneurysm-detection" / "kaggle_evaluation"
    comp.mkdir(parents=True)
    (comp / "__init__.py").write_text("")
    (comp / "rsna_inference_server.py").write_text(FAKE_SERVER)
    series = tmp_path / "series"
    for n in range(3):
        make_series(series / f"s{n}", SeriesSpec(preset="tiny", test_tags_only=True), series_uid=f"1.2.3.{n}",
                    keep_volume=False)
    decoy = tmp_path / "share"  # RSNA_SHARE_ROOT: not the gateway's folder, so the predictor must leave it alone
    (decoy / "keep").mkdir(parents=True)
    work = tmp_path / "working"
    work.mkdir()
    env = {**os.environ, "RSNA_INPUT_ROOT": str(staging / "datasets"), "RSNA_WORK_DIR": str(work),
           "FAKE_SERIES_ROOT": str(series), "KAGGLE_IS_COMPETITION_RERUN": "1", "RSNA_SKIP_INSTALL": "1",
           "RSNA_SHARE_ROOT": str(decoy), "RSNA_SUMMARY_EVERY": "2",
           "RSNA_PREDICTOR_OVERRIDES": json.dumps({"tta_flip": False})}
    code = staging / "kernels" / "rsna-aneurysm-submit" / "submit.py"
    proc = subprocess.run([sys.executable, str(code)], env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    got = json.loads((work / "fake_server.json").read_text())
    assert got["how"] == "serve" and len(got["rows"]) == 3 and len(got["rows"][0]) == len(LABEL_COLS)
    # Only the gateway's share folder is the predictor's; RSNA_SHARE_ROOT is ignored, with a warning.
    assert f"ignoring RSNA_SHARE_ROOT '{decoy}'" in out and "share folder /kaggle/shared" in out
    assert (decoy / "keep").is_dir()
    # The summary is logged while serve() runs (it never returns in the scored rerun): after series 2, not 1 or 3.
    assert "predictor summary after 2 series: " in out
    assert "predictor summary after 1 series" not in out and "predictor summary after 3 series" not in out
    logged = json.loads(out.split("predictor summary after 2 series: ", 1)[1].splitlines()[0])
    assert logged["predicted"] + logged["fallback"] == 2 and "config" not in logged


def test_kernel_code_file_says_what_is_missing(tmp_path: Path) -> None:
    code = Path(__file__).parents[2] / "kernels" / "rsna-aneurysm-submit" / "submit.py"
    if not code.is_file():
        pytest.skip("kernel folder not found beside the tests")
    env = {**os.environ, "RSNA_INPUT_ROOT": str(tmp_path), "RSNA_WORK_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(code)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "attach the code dataset" in proc.stderr
