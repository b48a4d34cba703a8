"""Every file of every on-disk stage, named once: the competition folder, the preprocessed folder, the patch cache,
a training run (``weights/<run>``), stage one inside it, and the flat packaged weights dataset.

Modules build paths from these classes and read the shared tables through the readers here, so a file name exists
in one place and a missing file always gets the same message (the folder, the file, the command that writes it).
The folders themselves are described in ``docs/layout.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .constants import ID_COL


class LayoutError(FileNotFoundError):
    """A stage folder lacks a file that the command needs (the message names the file and what writes it)."""


class UnsafeUIDError(ValueError):
    """A series UID that is not a safe single path component (it would write outside the output folder)."""


# DICOM UIDs are digits and dots (PS3.5 9.1); the kit accepts a little more (letters, '-', '_') for local data, but
# never a path separator, a leading dot, '..', NUL or a name longer than a file system allows.
_SAFE_UID = re.compile(r"[0-9A-Za-z_-][0-9A-Za-z._-]{0,127}")


def check_uid(uid: object, source: str | Path | None = None) -> str:
    """``uid`` as a string when it is a safe file-name component, else :class:`UnsafeUIDError` naming ``source``.

    Every path builder below calls this, so no UID (``../../x``, ``/abs``, ``a/b``, ``..``) can write outside the
    stage folder it is joined to."""
    s = "" if uid is None else str(uid)
    if not _SAFE_UID.fullmatch(s) or ".." in s:
        where = f"{source}: " if source is not None else ""
        raise UnsafeUIDError(f"{where}SeriesInstanceUID {s[:80]!r} is not a safe file name (letters, digits, '.', "
                             "'-', '_'; at most 128 characters; no '..' or path separator)")
    return s


def _need(path: Path, writer: str) -> Path:
    if not path.is_file():
        raise LayoutError(f"{path}: not found (written by `{writer}`)")
    return path


# -- the competition folder (real, or written by `rsna-aneurysm synth`) ----------------------------------------
@dataclass(frozen=True)
class DataDir:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def train_csv(self) -> Path:
        return self.root / "train.csv"

    @property
    def localizers_csv(self) -> Path:
        return self.root / "train_localizers.csv"

    @property
    def series_dir(self) -> Path:
        return self.root / "series"

    def series(self, uid: str) -> Path:
        return self.series_dir / check_uid(uid, self.series_dir)

    def segmentation(self, uid: str, vessels: bool = True) -> Path:
        uid = check_uid(uid, self.root / "segmentations")
        return self.root / "segmentations" / uid / (f"{uid}_cowseg.nii" if vessels else f"{uid}.nii")

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    @property
    def truth_json(self) -> Path:
        return self.root / "synth_truth.json"


@dataclass(frozen=True)
class TestDir:
    """A labelled local test folder: ``test.csv``, ``series/<uid>/``, ``solution.csv`` (synthetic data)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def test_csv(self) -> Path:
        return self.root / "test.csv"

    @property
    def solution_csv(self) -> Path:
        return self.root / "solution.csv"

    def series(self, uid: str) -> Path:
        return self.root / "series" / check_uid(uid, self.root / "series")


# -- the preprocessed folder (written by `rsna-aneurysm preprocess`) ----------------------------------------------
@dataclass(frozen=True)
class PreDir:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def localizers(self) -> Path:
        return self.root / "localizers.parquet"

    @property
    def train_csv(self) -> Path:
        return self.root / "train.csv"

    @property
    def test_csv(self) -> Path:
        return self.root / "test.csv"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def sidecar_dir(self) -> Path:
        return self.root / "series"

    def sidecar(self, uid: str) -> Path:
        return self.sidecar_dir / f"{check_uid(uid, self.sidecar_dir)}.json"

    @staticmethod
    def volume_rel(uid: str) -> str:
        return f"volumes/{check_uid(uid)}.nii.gz"

    @staticmethod
    def mask_rel(uid: str) -> str:
        return f"masks/{check_uid(uid)}.nii.gz"

    @staticmethod
    def segmentation_rel(uid: str) -> str:
        return f"segmentations/{check_uid(uid)}.nii.gz"

    @property
    def region_targets(self) -> Path:
        return self.root / "region_targets.parquet"

    @property
    def region_atlas(self) -> Path:
        return self.root / "region_atlas.parquet"

    @property
    def mined_negatives(self) -> Path:
        return self.root / "mined_negatives.parquet"

    @property
    def default_cache(self) -> Path:
        return self.root / "patch_cache"

    def exists(self) -> bool:
        return self.manifest.is_file()


def read_manifest(pre: str | Path | PreDir, ok_only: bool = True) -> pl.DataFrame:
    """``manifest.parquet`` of a preprocessed folder (only the series that preprocessed, by default)."""
    pre = pre if isinstance(pre, PreDir) else PreDir(pre)
    m = pl.read_parquet(_need(pre.manifest, "rsna-aneurysm preprocess"))
    return m.filter(pl.col("status") == "ok") if ok_only else m


def read_localizers(pre: str | Path | PreDir, mapped_only: bool = True) -> pl.DataFrame:
    """``localizers.parquet`` (only the rows mapped to world coordinates, by default); empty when absent."""
    pre = pre if isinstance(pre, PreDir) else PreDir(pre)
    if not pre.localizers.is_file():
        return pl.DataFrame(schema={ID_COL: pl.Utf8, "location": pl.Utf8, "world_x": pl.Float64,
                                    "world_y": pl.Float64, "world_z": pl.Float64})
    locs = pl.read_parquet(pre.localizers)
    if mapped_only and "world_x" in locs.columns:
        locs = locs.filter(pl.col("world_x").is_not_null())
        if "status" in locs.columns:
            locs = locs.filter(pl.col("status") == "ok")
    return locs


def read_region_targets(pre: str | Path | PreDir) -> pl.DataFrame:
    """``region_targets.parquet`` of a preprocessed folder (per series: region centre, extent, source)."""
    pre = pre if isinstance(pre, PreDir) else PreDir(pre)
    return pl.read_parquet(_need(pre.region_targets, f"rsna-aneurysm region targets --pre {pre.root}"))


# -- the patch cache (written by `rsna-aneurysm cache`) ----------------------------------------------------------
@dataclass(frozen=True)
class CacheDir:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def index(self) -> Path:
        return self.root / "index.parquet"

    @property
    def config(self) -> Path:
        return self.root / "cache_config.json"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    def entry(self, key: str, part: str = "") -> Path:
        """``<key>.npy`` (patches), ``<key>.labels.npy``, ``<key>.mask.npy`` or ``<key>.json``."""
        return self.root / (f"{key}.json" if part == "json" else f"{key}{'.' + part if part else ''}.npy")


# Inside fold_<k>/ of a training run.
BEST_CKPT = "best.pt"
LAST_CKPT = "last.pt"
METRICS_CSV = "metrics.csv"


# The vessel-ROI pipeline's files: the segmenter in a run folder (vessels/segmenter.pt) and flat in a packaged
# weights dataset (Kaggle datasets hold no folders), the ROI settings, and the ROI cache's index (not index.parquet:
# it is no patch cache).
VESSELS_DIR = "vessels"
SEGMENTER_FILE = "segmenter.pt"
SEGMENTER_FLAT = "vessels_segmenter.pt"
ROI_JSON = "roi.json"
ROI_INDEX = "roi_index.parquet"


# -- a training run / weights folder (written by `rsna-aneurysm train`, `region train`, `oof`, `score`) ----------
@dataclass(frozen=True)
class RunDir:
    """``weights/<run>``: ``config.json``, ``fold_<k>/{best,last}.pt`` (training) or flat ``fold_<k>.pt``
    (packaged), and the files the later stages add beside them."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    def fold_dir(self, fold: int) -> Path:
        return self.root / f"fold_{fold}"

    def checkpoint(self, fold: int, which: str = "best") -> Path:
        return self.fold_dir(fold) / f"{which}.pt"  # BEST_CKPT / LAST_CKPT

    @staticmethod
    def flat_checkpoint_name(fold: int) -> str:
        return f"fold_{fold}.pt"

    def history(self, fold: int) -> Path:
        return self.fold_dir(fold) / METRICS_CSV

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def predictor(self) -> Path:
        return self.root / "predictor.json"

    @property
    def segmenter(self) -> Path:
        """The vessel segmenter of a run folder (``vessels train`` writes it into its own run's ``vessels/``)."""
        return self.root / VESSELS_DIR / SEGMENTER_FILE

    @property
    def roi_json(self) -> Path:
        """A vessel-ROI run's ROI and region settings, and the marker of such a folder."""
        return self.root / ROI_JSON

    @property
    def prevalence(self) -> Path:
        return self.root / "prevalence.json"

    @property
    def thresholds(self) -> Path:
        return self.root / "thresholds.json"

    @property
    def oof(self) -> Path:
        return self.root / "oof.parquet"

    @property
    def region_dir(self) -> Path:
        return self.root / REGION_DIR

    def checkpoints(self, which: str = "best") -> dict[int, Path]:
        """Fold -> checkpoint: ``fold_<k>/<which>.pt`` of a training run, or the packaged flat ``fold_<k>.pt``."""
        found: dict[int, Path] = {}
        for p in self.root.glob("fold_*"):
            stem = p.name[len("fold_"):]
            if p.is_dir() and stem.isdigit() and (p / f"{which}.pt").is_file():
                found[int(stem)] = p / f"{which}.pt"
            elif p.is_file() and p.suffix == ".pt" and stem[:-3].isdigit():
                found.setdefault(int(stem[:-3]), p)
        return dict(sorted(found.items()))


# Stage one (the region finder) of a run: region/{region.json, finder.pt, atlas.parquet, finder_metrics.json};
# in the packaged weights dataset (Kaggle datasets hold no sub-folders) the same files sit flat under other names.
REGION_DIR = "region"
REGION_FILES = {"config": "region.json", "finder": "finder.pt", "atlas": "atlas.parquet",
                "metrics": "finder_metrics.json"}
REGION_FLAT_FILES = {"config": "region.json", "finder": "region_finder.pt", "atlas": "region_atlas.parquet"}


def region_files(run_dir: str | Path) -> dict[str, Path] | None:
    """Stage one's files of a weights folder (run layout first, then the flat packaged one); None when absent."""
    run = Path(run_dir)
    folder = run / REGION_DIR
    if (folder / REGION_FILES["config"]).is_file():
        return {k: folder / v for k, v in REGION_FILES.items() if k != "metrics"}
    if (run / REGION_FLAT_FILES["config"]).is_file():
        return {k: run / v for k, v in REGION_FLAT_FILES.items()}
    return None
