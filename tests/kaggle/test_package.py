"""``rsna-aneurysm package``: templates filled from the settings, flat weights, the kit wheel, wheel downloads."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest
import weights_helper

from rsna_aneurysm.cli import main
from rsna_aneurysm.config import load_config
from rsna_aneurysm.constants import LABEL_COLS
from rsna_aneurysm.infer.predictor import PredictorConfig
from rsna_aneurysm.kaggle import package as pkg
from rsna_aneurysm.kaggle.push import check_dataset, check_kernel


def test_package_fills_every_folder_from_the_settings(tmp_path: Path) -> None:
    run = weights_helper.make_weights(tmp_path / "run", folds=(0, 1, 2))
    (run / "thresholds.json").write_text(json.dumps({c: 0.3 for c in LABEL_COLS}))
    (run / "predictor.json").write_text(json.dumps({"tta_flip": False, "heatmap_dir": "/somewhere"}))
    out = tmp_path / "staging"
    rc = main(["package", "--weights", str(run), "--out", str(out), "--no-wheels", "--folds", "0,2",
               "--owner", "someone", "--weights_slug", "my-weights-v2", "--kernel_slug", "my-submit",
               "--kernel_title", "My submit"])
    assert rc == 0

    weights = out / "datasets" / "my-weights-v2"
    names = sorted(p.name for p in weights.iterdir())
    assert names == ["config.json", "dataset-metadata.json", "fold_0.pt", "fold_2.pt", "predictor.json",
                     "prevalence.json", "rsna_weights.json", "thresholds.json"]
    assert (weights / "fold_2.pt").read_bytes() == (run / "fold_2" / "best.pt").read_bytes()
    pcfg = load_config(PredictorConfig, weights / "predictor.json")
    assert pcfg.tta_flip is False and pcfg.heatmap_dir is None and pcfg.folds is None  # every shipped fold
    assert json.loads((weights / "rsna_weights.json").read_text())["folds"] == [0, 2]

    meta = check_dataset(weights)
    assert meta["id"] == "someone/my-weights-v2"
    code = out / "datasets" / "rsna-aneurysm-code"
    assert check_dataset(code)["id"] == "someone/rsna-aneurysm-code"
    wheel = next(code.glob("rsna_aneurysm-*-py3-none-any.whl"))
    with zipfile.ZipFile(wheel) as z:
        members = z.namelist()
    assert "rsna_aneurysm/infer/predictor.py" in members and "rsna_aneurysm/kaggle/package.py" in members
    assert not [m for m in members if m.startswith("tests/") or "__pycache__" in m]
    assert json.loads((out / "datasets" / "rsna-aneurysm-wheels" / "rsna_wheels.json").read_text())["wheels"] == []

    kernel_dir = out / "kernels" / "my-submit"
    kernel = check_kernel(kernel_dir, ["someone/my-weights-v2"])
    assert kernel["id"] == "someone/my-submit" and kernel["title"] == "My submit"
    assert kernel["enable_internet"] is False and kernel["enable_gpu"] is True
    assert kernel["dataset_sources"] == ["someone/my-weights-v2", "someone/rsna-aneurysm-code",
                                         "someone/rsna-aneurysm-wheels"]
    assert (kernel_dir / kernel["code_file"]).is_file()
    assert "{{" not in "".join(p.read_text() for p in out.rglob("*.json"))


def test_owner_prevalence_and_fold_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = weights_helper.make_weights(tmp_path / "run", prevalence=False)
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    with pytest.raises(pkg.PackageError, match="--owner"):
        pkg.package(run, pkg.KaggleConfig(), tmp_path / "out", download=False)
    monkeypatch.setenv("KAGGLE_USERNAME", "envowner")
    assert pkg.resolve_owner(pkg.KaggleConfig()) == "envowner"
    with pytest.raises(pkg.PackageError, match="no prevalence.json"):
        pkg.package(run, pkg.KaggleConfig(), tmp_path / "out", download=False)
    with pytest.raises(pkg.PackageError, match="fold"):
        pkg.package(run, pkg.KaggleConfig(), tmp_path / "out", folds=[3], download=False)
    with pytest.raises(pkg.PackageError, match="not a Kaggle user name"):
        pkg.resolve_owner(pkg.KaggleConfig(owner="bad owner"))


def test_wheel_download_targets_the_kaggle_python_and_platform(tmp_path: Path, monkeypatch) -> None:
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        (tmp_path / "pylibjpeg-2.1.0-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(pkg.subprocess, "run", fake_run)
    cfg = pkg.KaggleConfig()
    got = pkg.download_wheels(tmp_path, cfg.wheel_packages, cfg.python_version, cfg.platforms)
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--only-binary=:all:" in cmd and "--no-deps" in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.11"
    assert [cmd[i + 1] for i, c in enumerate(cmd) if c == "--platform"] == cfg.platforms
    assert "python-gdcm>=3.0" in cmd and [p.name for p in got] == ["pylibjpeg-2.1.0-py3-none-any.whl"]

    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "No matching distribution found")

    monkeypatch.setattr(pkg.subprocess, "run", failing_run)
    with pytest.raises(pkg.PackageError, match="--no-wheels"):
        pkg.download_wheels(tmp_path, ["nothing-here"], "3.11", ["manylinux2014_x86_64"])
