"""Export the vessel-segmentation training set of a preprocessed folder in nnU-Net v2's raw dataset format.

``export_nnunet_raw(PRE, OUT)`` writes ``OUT/Dataset501_RSNAVessels/``::

    imagesTr/rsna_0001_0000.nii.gz   the preprocessed volume (one channel)
    labelsTr/rsna_0001.nii.gz        its vessel labels (uint8, constants.SEG_LABELS, 0 = background), same geometry
    dataset.json                     channel_names, labels, numTraining, file_ending (written last)
    cases.csv                        case id -> SeriesInstanceUID

One case per ``ok`` series of the manifest that has a segmentation, numbered in manifest order. nnU-Net is not a
dependency: the user runs ``nnUNetv2_plan_and_preprocess`` / ``nnUNetv2_train`` on the result.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from ..constants import ID_COL, SEG_LABELS
from ..io.atomic import atomic_path, atomic_write_csv, atomic_write_text
from ..io.nifti import read_volume, write_volume
from ..layout import PreDir, check_uid, read_manifest

FILE_ENDING = ".nii.gz"
# nnU-Net picks its intensity normalisation from the channel name ("CT" = CT normalisation with dataset-wide
# statistics); an unknown name means per-case z-scoring. The kit's volumes are already normalised (CT window or MR
# percentiles, mixed modalities), so the channel gets a neutral name: z-scoring.
CHANNEL_NAME = "normalized"
CASE_PREFIX = "rsna"
GEOMETRY_TOL = 1e-4


class NnunetExportError(ValueError):
    """The preprocessed folder cannot be exported (no segmentations, a label off its image's grid, bad values)."""


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``DatasetXXX_Name`` (XXX three digits) after checking ``dataset_id`` is 1..999 and ``name`` is simple."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, (int, np.integer)) or not 1 <= dataset_id <= 999:
        raise ValueError(f"nnU-Net dataset id must be an integer 1..999, got {dataset_id!r}")
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"nnU-Net dataset name must be letters, digits, '-' or '_', got {name!r}")
    return f"Dataset{int(dataset_id):03d}_{name}"


def nnunet_labels() -> dict[str, int]:
    """``labels`` of dataset.json: background 0, then the vessel classes by value (consecutive 1..13)."""
    values = sorted(SEG_LABELS)
    assert values == list(range(1, len(values) + 1)), "SEG_LABELS must be consecutive from 1"
    return {"background": 0, **{SEG_LABELS[v]: v for v in values}}


def case_id(index: int) -> str:
    """The nnU-Net case name of the ``index``-th (from 1) exported series: ``rsna_0001``."""
    return f"{CASE_PREFIX}_{index:04d}"


def _check_geometry(img, lab, uid: str) -> None:
    problems = []
    if img.array.shape != lab.array.shape:
        problems.append(f"shape {lab.array.shape} != image {img.array.shape}")
    for what in ("spacing", "origin", "direction"):
        a, b = np.asarray(getattr(img, what), float), np.asarray(getattr(lab, what), float)
        if a.shape != b.shape or not np.allclose(a, b, rtol=0, atol=GEOMETRY_TOL):
            problems.append(f"{what} {b.round(5).tolist()} != image {a.round(5).tolist()}")
    if problems:
        raise NnunetExportError(f"series {uid}: segmentation is not on the volume's grid ({'; '.join(problems)})")


def _check_values(labels: np.ndarray, uid: str) -> np.ndarray:
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise NnunetExportError(f"series {uid}: segmentation holds non-integer values")
    values = np.unique(labels)
    bad = sorted(int(v) for v in values if int(v) != 0 and int(v) not in SEG_LABELS)
    if bad:
        raise NnunetExportError(f"series {uid}: segmentation holds label values {bad} outside the vessel classes "
                                f"0..{max(SEG_LABELS)}")
    return labels.astype(np.uint8, copy=False)


def _place_image(src: Path, dst: Path, link: bool) -> None:
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if link:
        os.symlink(src.resolve(), dst)
    else:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)


def export_nnunet_raw(pre_dir: str | Path | PreDir, out_root: str | Path, dataset_id: int = 501,
                      name: str = "RSNAVessels", link: bool = False) -> Path:
    """Write ``out_root/DatasetXXX_<name>`` (nnU-Net v2 raw format) from a preprocessed folder; returns it.

    Every ``ok`` series with a segmentation becomes one case (``rsna_0001``, ... in manifest order; ``cases.csv``
    maps them back to SeriesInstanceUID). Each label must be on its volume's grid (shape, spacing, origin,
    direction within 1e-4) and hold only known classes, else :class:`NnunetExportError` names the series. ``link``
    symlinks the images instead of copying them. A rerun rewrites every file and removes cases no longer there;
    dataset.json is written last, so a folder without it is an unfinished export."""
    pre = pre_dir if isinstance(pre_dir, PreDir) else PreDir(pre_dir)
    folder = Path(out_root) / dataset_folder_name(dataset_id, name)
    manifest = read_manifest(pre)
    if "segmentation" not in manifest.columns:
        raise NnunetExportError(f"{pre.manifest}: no 'segmentation' column (rerun `rsna-aneurysm preprocess`)")
    rows = manifest.filter(pl.col("segmentation").is_not_null() & (pl.col("segmentation") != ""))
    if not len(rows):
        raise NnunetExportError(f"{pre.root}: no ok series has a vessel segmentation (segmentations/ comes from the "
                                "competition folder's <uid>_cowseg.nii files), nothing to export")
    images, labels = folder / "imagesTr", folder / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    stale = folder / "dataset.json"
    if stale.exists():
        stale.unlink()  # the folder is unfinished until this run writes it again

    cases: list[tuple[str, str]] = []
    for n, r in enumerate(rows.iter_rows(named=True), start=1):
        uid = check_uid(r[ID_COL], pre.manifest)
        case = case_id(n)
        img_src, lab_src = pre.root / r["volume"], pre.root / r["segmentation"]
        for p, what in ((img_src, "volume"), (lab_src, "segmentation")):
            if not p.is_file():
                raise NnunetExportError(f"series {uid}: {what} {p} not found (rerun `rsna-aneurysm preprocess`)")
        img = read_volume(img_src)
        lab = read_volume(lab_src, mmap=False)
        if img.array.ndim != 3:
            raise NnunetExportError(f"series {uid}: volume is not 3D")
        _check_geometry(img, lab, uid)
        lab.array = _check_values(np.asarray(lab.array), uid)
        _place_image(img_src, images / f"{case}_0000{FILE_ENDING}", link)
        write_volume(lab, labels / f"{case}{FILE_ENDING}", dtype=np.uint8)
        cases.append((case, uid))

    wanted_images = {f"{c}_0000{FILE_ENDING}" for c, _ in cases}
    wanted_labels = {f"{c}{FILE_ENDING}" for c, _ in cases}
    for d, wanted in ((images, wanted_images), (labels, wanted_labels)):
        for p in d.iterdir():
            if p.name not in wanted and (p.is_file() or p.is_symlink()):
                p.unlink()  # a case of an earlier export that is gone now

    atomic_write_csv(pl.DataFrame(cases, schema={"case": pl.Utf8, ID_COL: pl.Utf8}, orient="row"),
                     folder / "cases.csv")
    spec = {
        "name": name,
        "description": "RSNA Intracranial Aneurysm Detection: vessel labels (rsna-aneurysm nnunet-export)",
        "channel_names": {"0": CHANNEL_NAME},
        "labels": nnunet_labels(),
        "numTraining": len(cases),
        "file_ending": FILE_ENDING,
    }
    atomic_write_text(folder / "dataset.json", json.dumps(spec, indent=2) + "\n")
    return folder
