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


def _source_copy(root: Path) -> Path:
    """A copy of the kit's source tree (setup.cfg, README, src/, kernels/) to plant stray files in."""
    import shutil

    repo = Path(__file__).parents[2]
    root.mkdir(parents=True)
    for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md", "LICENSE"):
        if (repo / name).is_file():
            shutil.copy2(repo / name, root / name)
    shutil.copytree(repo / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return root


def test_kit_wheel_ships_only_allow_listed_files_and_no_credentials(tmp_path: Path) -> None:
    src = _source_copy(tmp_path / "src_tree")
    configs = src / "src" / "rsna_aneurysm" / "configs"
    (configs / "notes.txt").write_text("scratch")
    (src / "src" / "rsna_aneurysm" / "infer" / "dump.bin").write_bytes(b"\0" * 10)
    wheel = pkg.build_kit_wheel(src, tmp_path)
    with zipfile.ZipFile(wheel) as z:
        members = z.namelist()
    assert "rsna_aneurysm/configs/unet3d_cpu_demo.json" in members
    assert not [m for m in members if m.endswith(("notes.txt", "dump.bin"))]
    assert pkg.wheel_problems(wheel) == []
    # A credentials file dropped into configs/ (setup.cfg packs configs/*.json) stops the build, by name or content.
    (configs / "kaggle.json").write_text(json.dumps({"username": "me", "key": "0123"}))
    with pytest.raises(pkg.PackageError, match="credentials"):
        pkg.build_kit_wheel(src, tmp_path / "out")
    (configs / "kaggle.json").unlink()
    (configs / "token_copy.json").write_text(json.dumps({"nested": {"username": "me", "key": "0123"}}))
    with pytest.raises(pkg.PackageError, match="key and username"):
        pkg.build_kit_wheel(src, tmp_path / "out")


def test_wheel_check_and_credential_scan(tmp_path: Path) -> None:
    from rsna_aneurysm.kaggle.safety import find_credentials

    wheel = tmp_path / "rsna_aneurysm-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("rsna_aneurysm/__init__.py", "")
        z.writestr("rsna_aneurysm/configs/a.json", "{}")
        z.writestr("rsna_aneurysm-0.1.0.dist-info/METADATA", "x")
        z.writestr("rsna_aneurysm/configs/kaggle.json", json.dumps({"username": "u", "key": "k"}))
        z.writestr("rsna_aneurysm/notes.txt", "x")
    problems = pkg.wheel_problems(wheel)
    assert any("notes.txt: not an allow-listed" in p for p in problems)
    assert any("kaggle.json: looks like a credential" in p for p in problems)
    assert not any("METADATA" in p or "a.json" in p or "__init__" in p for p in problems)
    folder = tmp_path / "upload"
    (folder / "sub").mkdir(parents=True)
    for name in ("ok.json", "model.pt", "notes.md"):
        (folder / name).write_text("{}")
    (folder / "sub" / "id_rsa").write_text("x")
    (folder / ".env").write_text("KAGGLE_KEY=1")
    (folder / "server.pem").write_text("x")
    (folder / "token.json").write_text(json.dumps([{"key": "k", "username": "u"}]))
    (folder / "deploy.txt").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n")
    assert find_credentials(folder) == [".env", "deploy.txt", "server.pem", "sub/id_rsa", "token.json"]


def test_packaging_refuses_a_wheel_carrying_credentials(tmp_path: Path) -> None:
    run = weights_helper.make_weights(tmp_path / "run")
    extra = tmp_path / "extra"
    extra.mkdir()
    with zipfile.ZipFile(extra / "evil-1.0-py3-none-any.whl", "w") as z:
        z.writestr("evil/kaggle.json", json.dumps({"username": "u", "key": "k"}))
    with pytest.raises(pkg.PackageError, match="evil-1.0-py3-none-any.whl!evil/kaggle.json"):
        pkg.package(run, pkg.KaggleConfig(owner="someone"), tmp_path / "out", download=False, wheel_dirs=[extra])


def test_weights_dataset_carries_no_absolute_local_paths(tmp_path: Path) -> None:
    import torch

    from rsna_aneurysm.train.checkpoint import load_checkpoint

    run = weights_helper.make_weights(tmp_path / "run", folds=(0, 1))
    local = {"data": {"preprocessed": "/home/trainer/rsna/pre", "raw": "C:\\Users\\me\\data"},
             "cache_dir": "/mnt/fast/cache", "out_dir": "~/weights/run", "folds": [0, 1], "note": "a/relative/path"}
    cfg = json.loads((run / "config.json").read_text()) | local
    (run / "config.json").write_text(json.dumps(cfg))
    ckpt_path = run / "fold_1" / "best.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["config"] = ckpt["config"] | local
    ckpt["source_path"] = "/home/trainer/rsna/weights/run/fold_1/best.pt"
    torch.save(ckpt, ckpt_path)
    out = tmp_path / "out"
    weights = pkg.package(run, pkg.KaggleConfig(owner="someone"), out, download=False)["weights"]

    staged = json.loads((weights / "config.json").read_text())
    assert staged["data"] == {"preprocessed": "pre", "raw": "data"}
    assert staged["cache_dir"] == "cache" and staged["out_dir"] == "run" and staged["note"] == "a/relative/path"
    text = "".join(p.read_text() for p in weights.glob("*.json"))
    assert "/home/" not in text and "/mnt/" not in text and "Users" not in text
    new = load_checkpoint(weights / "fold_1.pt")  # still a kit checkpoint
    assert new["config"]["data"]["preprocessed"] == "pre" and new["source_path"] == "best.pt"
    assert new["state_dict"].keys() == ckpt["state_dict"].keys()
    assert all(torch.equal(new["state_dict"][k], v) for k, v in ckpt["state_dict"].items())  # weights identical
    assert (weights / "fold_0.pt").read_bytes() == (run / "fold_0" / "best.pt").read_bytes()  # nothing to strip
    assert json.loads((weights / "rsna_weights.json").read_text())["paths_stripped"] >= 9
    # The flat weights still predict.
    from rsna_aneurysm.infer.predictor import Predictor

    assert len(Predictor.from_weights(weights, overrides={"share_root": None}).checkpoints) == 2
