"""``rsna-aneurysm package``: fill the three Kaggle datasets and the kernel folder for upload.

Output (``out_dir``, default ``build/kaggle``; each dataset folder mirrors ``/kaggle/input/<slug>``):
```
datasets/<weights_slug>/  fold_<k>.pt (the chosen checkpoints), config.json, predictor.json, prevalence.json,
                          thresholds.json (when calibrated), region.json + region_finder.pt + region_atlas.parquet
                          (two-stage runs), rsna_weights.json (manifest), dataset-metadata.json
datasets/<code_slug>/     rsna_aneurysm-<version>-py3-none-any.whl (the kit), rsna_code.json, dataset-metadata.json
datasets/<wheels_slug>/   wheels the Kaggle image lacks (DICOM decoders), rsna_wheels.json, dataset-metadata.json
kernels/<kernel_slug>/    submit.py (the thin code file), kernel-metadata.json
```
Every file sits at the top of its dataset (``kaggle datasets create`` skips folders). The metadata comes from the
templates in the repository's ``datasets/`` and ``kernels/`` with ``{{owner}}`` and the slugs filled in from the
settings; nothing about the owner is hard-coded and no credential is read.

What is uploaded is checked (:mod:`.safety`): the kit wheel is built from an allow-listed copy of the package (its
``*.py`` files and the JSON configs in ``configs/``) and its file list checked after the build; a credential-like
file (``kaggle.json``, ``*.pem``, ``.env``, ``id_rsa``..., JSON with ``key`` and ``username``) anywhere in the output
stops packaging; absolute paths of the training machine in ``config.json``, ``region.json`` and the checkpoints'
metadata are reduced to their last component (checkpoints are then re-saved with the same tensors).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..io.atomic import atomic_write_text
from .safety import (
    copy_json_stripped,
    credential_json,
    credential_name,
    find_credentials,
    rewrite_checkpoint,
    wheel_problems,
)

log = logging.getLogger(__name__)

WEIGHTS_MANIFEST = "rsna_weights.json"
CODE_MANIFEST = "rsna_code.json"
WHEELS_MANIFEST = "rsna_wheels.json"
KERNEL_CODE_FILE = "submit.py"
TEMPLATE_DIRS = {"weights": "datasets/rsna-aneurysm-weights", "code": "datasets/rsna-aneurysm-code",
                 "wheels": "datasets/rsna-aneurysm-wheels", "kernel": "kernels/rsna-aneurysm-submit"}


class PackageError(RuntimeError):
    """Packaging cannot go on: a missing input, a failed build or download; the message says which."""


@dataclass
class KaggleConfig:
    """Where the submission goes on Kaggle; set with ``--config FILE`` and ``--key value`` overrides."""

    owner: str = ""  # Kaggle user (or organisation) name; empty: the KAGGLE_USERNAME environment variable
    weights_slug: str = "rsna-aneurysm-weights"
    code_slug: str = "rsna-aneurysm-code"
    wheels_slug: str = "rsna-aneurysm-wheels"
    kernel_slug: str = "rsna-aneurysm-submit"
    kernel_title: str = "RSNA aneurysm submit"  # should slugify to kernel_slug (the CLI warns otherwise)
    competition: str = "rsna-intracranial-aneurysm-detection"
    is_private: bool = True
    enable_gpu: bool = True
    # Wheels downloaded for the Kaggle image (which has pydicom but no decoders for compressed DICOM).
    # dynamic-network-architectures: nnU-Net's network library, the vessel-ROI pipeline's U-Net (pure Python).
    wheel_packages: list[str] = field(default_factory=lambda: [
        "pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1", "pylibjpeg-openjpeg>=2.0", "python-gdcm>=3.0",
        "dynamic-network-architectures>=0.4,<0.5"])
    python_version: str = "3.11"  # the Kaggle image's Python
    platforms: list[str] = field(default_factory=lambda: [
        "manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"])


def resolve_owner(cfg: KaggleConfig) -> str:
    """The owner from the settings or ``KAGGLE_USERNAME``; a clear error when neither is set."""
    import os

    owner = cfg.owner or os.environ.get("KAGGLE_USERNAME", "")
    if not owner:
        raise PackageError("no Kaggle owner: pass --owner NAME (or set KAGGLE_USERNAME)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", owner):
        raise PackageError(f"owner {owner!r} is not a Kaggle user name")
    return owner


def source_root(start: str | Path | None = None) -> Path:
    """The kit's source tree (``setup.cfg``, ``src/``, ``datasets/``, ``kernels/``): given, or above the package."""
    candidates = [Path(start)] if start else list(Path(__file__).resolve().parents)
    for c in candidates:
        if (c / "setup.cfg").is_file() and (c / "src" / "rsna_aneurysm").is_dir() and (c / "kernels").is_dir():
            return c
    raise PackageError(f"cannot find the kit's source tree (setup.cfg, src/, kernels/) "
                       f"{'at ' + str(start) if start else 'above ' + str(Path(__file__).parent)}; pass --source")


def render_template(path: Path, values: dict[str, str]) -> dict[str, Any]:
    """A metadata template with ``{{name}}`` placeholders filled in, as JSON."""
    text = path.read_text()
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    left = sorted(set(re.findall(r"\{\{(\w+)\}\}", text)))
    if left:
        raise PackageError(f"{path}: no value for placeholder(s) {left}")
    return json.loads(text)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def stage_weights(run_dir: Path, dest: Path, folds: list[int] | None = None, checkpoint: str = "best",
                  predictor_config: Path | None = None) -> dict[str, Any]:
    """Copy the chosen checkpoints (flat ``fold_<k>.pt``) and the settings the predictor reads into ``dest``."""
    from ..infer.pipeline import PredictorConfig, find_checkpoints, write_prevalence
    from ..layout import REGION_FLAT_FILES, PreDir, RunDir, region_files

    run, staged = RunDir(run_dir), RunDir(dest)
    found = find_checkpoints(run_dir, checkpoint)
    chosen = folds if folds is not None else list(found)
    missing = [f for f in chosen if f not in found]
    if missing or not chosen:
        raise PackageError(f"{run_dir}: no {checkpoint} checkpoint for fold(s) {missing or chosen}; "
                           f"found {list(found)}")
    stripped: list[str] = []
    for fold in chosen:
        try:
            stripped += rewrite_checkpoint(found[fold], dest / RunDir.flat_checkpoint_name(fold))
        except Exception as e:  # noqa: BLE001 - an unreadable checkpoint must not be shipped
            raise PackageError(f"{found[fold]}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    run_cfg: dict[str, Any] = {}
    if run.config.is_file():
        stripped += copy_json_stripped(run.config, staged.config)
        run_cfg = json.loads(run.config.read_text())
    # Predictor settings: an explicit file, else the run's own, else the defaults (written out, so the kernel's
    # behaviour is visible in the dataset).
    from ..config import load_config, save_config

    src = predictor_config or (run.predictor if run.predictor.is_file() else None)
    pcfg = load_config(PredictorConfig, src)
    pcfg.folds, pcfg.checkpoint, pcfg.heatmap_dir = None, checkpoint, None
    save_config(pcfg, staged.predictor)
    if run.prevalence.is_file():
        shutil.copy2(run.prevalence, staged.prevalence)
    else:
        train_csv = PreDir((run_cfg.get("data") or {}).get("preprocessed") or "").train_csv
        if not train_csv.is_file():
            raise PackageError(f"{run_dir}: no {run.prevalence.name} and no train.csv at {train_csv} to compute the "
                               "fallback row from (run `rsna-aneurysm oof` first)")
        write_prevalence(train_csv, staged.prevalence)
    if run.thresholds.is_file():
        shutil.copy2(run.thresholds, staged.thresholds)
    region = region_files(run_dir)  # two-stage run: stage one's files, flat (datasets hold no folders)
    if region is not None:
        for key, path in region.items():
            if not path.is_file():
                continue
            target = dest / REGION_FLAT_FILES[key]
            if key == "config":
                stripped += copy_json_stripped(path, target)
            elif key == "finder":
                try:
                    stripped += rewrite_checkpoint(path, target)
                except Exception as e:  # noqa: BLE001 - the kernel falls back to the head-geometry box
                    log.warning("%s is not a readable checkpoint (%s); shipped as it is", path, e)
                    shutil.copy2(path, target)
            else:
                shutil.copy2(path, target)
    stripped += stage_vessel_roi(run_dir, dest)
    if stripped:
        log.info("weights dataset: %d absolute local path(s) reduced to their last component (%s, ...)",
                 len(stripped), stripped[0])
    manifest = {"run": run_dir.name, "folds": chosen, "checkpoint": checkpoint, "kit_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "paths_stripped": len(stripped),
                "files": sorted(p.name for p in dest.iterdir())}
    _write_json(dest / WEIGHTS_MANIFEST, manifest)
    return manifest


def stage_vessel_roi(run_dir: Path, dest: Path) -> list[str]:
    """A vessel-ROI run's own files, flat: ``roi.json`` and the segmenter as ``vessels_segmenter.pt`` (the ROI
    classifiers are the fold checkpoints, the region finder stage one's files). Returns the paths stripped."""
    from ..layout import ROI_JSON, SEGMENTER_FLAT
    from ..roi.stage import has_vessel_roi, segmenter_file

    if not has_vessel_roi(run_dir):
        return []
    stripped = copy_json_stripped(Path(run_dir) / ROI_JSON, dest / ROI_JSON)
    try:
        stripped += rewrite_checkpoint(segmenter_file(run_dir), dest / SEGMENTER_FLAT)
    except Exception as e:  # noqa: BLE001 - a broken segmenter must not be shipped
        raise PackageError(f"{segmenter_file(run_dir)}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    return stripped


def copy_package_allowed(pkg: Path, dest: Path) -> list[str]:
    """Copy the kit's package (``src/rsna_aneurysm``) keeping only its ``*.py`` files and the config JSON files of
    ``configs/``; returns what was left out (logged). A credential-like config stops packaging."""
    skipped: list[str] = []
    for path in sorted(p for p in pkg.rglob("*") if p.is_file()):
        rel = path.relative_to(pkg)
        if "__pycache__" in rel.parts or any(part.endswith(".egg-info") for part in rel.parts):
            continue
        keep = path.suffix == ".py" and not credential_name(path.name)
        if rel.parent == Path("configs") and path.suffix == ".json":
            if credential_name(path.name):
                raise PackageError(f"{path}: a credentials file inside the kit's configs; move it out")
            try:
                data = json.loads(path.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError):
                data = None
            if credential_json(data):
                raise PackageError(f"{path}: holds credentials (key and username); move it out of the kit")
            keep = isinstance(data, dict)
        if not keep:
            skipped.append(str(rel))
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest / rel)
    if skipped:
        log.warning("kit wheel: left out %d file(s) not on the allow-list: %s", len(skipped), ", ".join(skipped[:10]))
    return skipped


def build_kit_wheel(source: Path, dest: Path) -> Path:
    """Build the kit's wheel from an allow-listed copy of the source tree (no stale ``build/`` leftovers, no stray
    files) into ``dest``, then check the built wheel's file list."""
    with tempfile.TemporaryDirectory(prefix="rsna_wheel_") as tmp:
        tree = Path(tmp) / "src_tree"
        tree.mkdir()
        for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md", "LICENSE"):
            if (source / name).is_file():
                shutil.copy2(source / name, tree / name)
        copy_package_allowed(source / "src" / "rsna_aneurysm", tree / "src" / "rsna_aneurysm")
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
               "-w", str(Path(tmp) / "out"), str(tree)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted((Path(tmp) / "out").glob("rsna_aneurysm-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise PackageError(f"building the kit wheel failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        problems = wheel_problems(wheels[0])
        if problems:
            raise PackageError(f"{wheels[0].name}: refusing to ship:\n  " + "\n  ".join(problems))
        target = dest / wheels[0].name
        shutil.copy2(wheels[0], target)
    return target


def download_wheels(dest: Path, packages: list[str], python_version: str, platforms: list[str]) -> list[Path]:
    """``pip download`` binary wheels of ``packages`` for the Kaggle Python and platform (no dependencies)."""
    if not packages:
        return []
    cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--quiet",
           "--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    for plat in platforms:
        cmd += ["--platform", plat]
    proc = subprocess.run(cmd + list(packages), capture_output=True, text=True)
    if proc.returncode != 0:
        raise PackageError(f"pip download of {packages} for Python {python_version} failed (exit "
                           f"{proc.returncode}); use --no-wheels offline:\n{proc.stderr[-2000:]}")
    return sorted(dest.glob("*.whl"))


def package(run_dir: str | Path, cfg: KaggleConfig, out_dir: str | Path = "build/kaggle",
            folds: list[int] | None = None, checkpoint: str = "best", download: bool = True,
            wheel_dirs: list[str | Path] | None = None, source: str | Path | None = None,
            predictor_config: str | Path | None = None) -> dict[str, Path]:
    """Fill every dataset folder and the kernel folder under ``out_dir``; returns {part: folder}."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PackageError(f"weights folder {run_dir} does not exist")
    owner = resolve_owner(cfg)
    root = source_root(source)
    out = Path(out_dir)
    values = {"owner": owner, "weights_slug": cfg.weights_slug, "code_slug": cfg.code_slug,
              "wheels_slug": cfg.wheels_slug, "kernel_slug": cfg.kernel_slug, "kernel_title": cfg.kernel_title,
              "competition": cfg.competition}
    folders = {"weights": out / "datasets" / cfg.weights_slug, "code": out / "datasets" / cfg.code_slug,
               "wheels": out / "datasets" / cfg.wheels_slug, "kernel": out / "kernels" / cfg.kernel_slug}
    metas = {part: render_template(root / TEMPLATE_DIRS[part] / ("kernel-metadata.json" if part == "kernel"
                                                                 else "dataset-metadata.json"), values)
             for part in folders}
    for path in folders.values():
        _fresh_dir(path)

    stage_weights(run_dir, folders["weights"], folds, checkpoint, Path(predictor_config) if predictor_config else None)

    wheel = build_kit_wheel(root, folders["code"])
    _write_json(folders["code"] / CODE_MANIFEST, {"wheel": wheel.name, "kit_version": __version__,
                                                  "commit": _git_commit(root)})

    wheels: list[Path] = []
    for d in wheel_dirs or []:
        for w in sorted(Path(d).glob("*.whl")):
            shutil.copy2(w, folders["wheels"] / w.name)
            wheels.append(folders["wheels"] / w.name)
    if download:
        wheels += download_wheels(folders["wheels"], cfg.wheel_packages, cfg.python_version, cfg.platforms)
    else:
        log.info("--no-wheels: the wheels dataset holds only %d local wheel(s)", len(wheels))
    _write_json(folders["wheels"] / WHEELS_MANIFEST, {"wheels": sorted({w.name for w in wheels}),
                                                      "python_version": cfg.python_version,
                                                      "platforms": cfg.platforms, "downloaded": download})

    kernel_meta = metas["kernel"]
    kernel_meta["is_private"] = cfg.is_private
    kernel_meta["enable_gpu"] = cfg.enable_gpu
    code_file = kernel_meta["code_file"]
    shutil.copy2(root / TEMPLATE_DIRS["kernel"] / code_file, folders["kernel"] / code_file)
    for part, meta in metas.items():
        name = "kernel-metadata.json" if part == "kernel" else "dataset-metadata.json"
        _write_json(folders[part] / name, meta)
    secrets = [f"{part}: {rel}" for part, folder in folders.items() for rel in find_credentials(folder)]
    if secrets:
        raise PackageError("credential-like files in what would be uploaded (remove them):\n  " + "\n  ".join(secrets))
    return folders


def _git_commit(root: Path) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None
