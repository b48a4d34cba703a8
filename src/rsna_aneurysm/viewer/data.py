"""Series access for the viewer: a preprocessed folder, or a competition folder preprocessed on the fly (cached).

Both give the same things: a table of series (modality, labels, number of localizers, status) and, per series, the
canonical preprocessed volume, its head mask and the ground-truth localizers as voxel indices of that volume
(docs/layout.md, "Preprocessed folder"). A competition folder's series go through ``preprocess.dataset.process_one``
(the exact preprocessing of ``rsna-aneurysm preprocess``) into a cache folder, once per series and setting.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..constants import ID_COL, LABEL_COLS
from ..layout import DataDir, PreDir, TestDir, check_uid
from ..volume import Volume

DEFAULT_CT_WINDOW = (-100.0, 700.0)
LOC_SCHEMA = {ID_COL: pl.Utf8, "location": pl.Utf8, "i": pl.Float64, "j": pl.Float64, "k": pl.Float64,
              "status": pl.Utf8}


class ViewerDataError(Exception):
    """A data folder (or one of its series) the viewer cannot read; the message names the path and the reason."""


@dataclass
class SeriesData:
    """One series on the preprocessed grid: volume, head mask, localizers (``location, i, j, k``) and labels."""

    uid: str
    modality: str | None
    volume: Volume
    mask: Volume | None
    localizers: pl.DataFrame
    labels: dict[str, int] | None
    source: str
    warnings: list[str] = field(default_factory=list)

    def gt_points(self) -> list[dict[str, Any]]:
        """Mapped localizers as ``{"location", "k", "j", "i"}`` (voxel indices; unmapped rows left out)."""
        ok = self.localizers.filter(pl.col("i").is_not_null() & pl.col("j").is_not_null() & pl.col("k").is_not_null())
        return [{"location": r["location"], "k": float(r["k"]), "j": float(r["j"]), "i": float(r["i"])}
                for r in ok.iter_rows(named=True)]


def _empty_localizers() -> pl.DataFrame:
    return pl.DataFrame(schema=LOC_SCHEMA)


def _read_labels(path: Path) -> pl.DataFrame | None:
    """``SeriesInstanceUID`` + whichever of the 14 label columns (and ``Modality``) a csv holds; None if absent."""
    if not path.is_file():
        return None
    try:
        df = pl.read_csv(path, infer_schema_length=10000, schema_overrides={ID_COL: pl.Utf8})
    except (pl.exceptions.PolarsError, OSError) as e:
        raise ViewerDataError(f"{path}: not a readable csv ({e})") from e
    if ID_COL not in df.columns:
        raise ViewerDataError(f"{path}: no {ID_COL} column")
    keep = [ID_COL] + [c for c in ("Modality", *LABEL_COLS) if c in df.columns]
    return df.select(keep).with_columns([pl.col(c).cast(pl.Int64, strict=False) for c in LABEL_COLS
                                         if c in df.columns])


def _with_label_columns(table: pl.DataFrame) -> pl.DataFrame:
    """Add any missing label column as nulls so every table has all 14."""
    missing = [pl.lit(None, dtype=pl.Int64).alias(c) for c in LABEL_COLS if c not in table.columns]
    return table.with_columns(missing) if missing else table


def _labels_of(table: pl.DataFrame, uid: str) -> dict[str, int] | None:
    row = table.filter(pl.col(ID_COL) == uid)
    if row.height == 0:
        return None
    values = row.select(LABEL_COLS).row(0, named=True)
    if any(v is None for v in values.values()):
        return None
    return {k: int(v) for k, v in values.items()}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ViewerDataError(f"{path}: not readable JSON ({e})") from e


def _read_pair(volume_path: Path, mask_path: Path | None, modality: str | None) -> tuple[Volume, Volume | None]:
    from ..io.nifti import read_volume

    try:
        vol = read_volume(volume_path, modality=modality, mmap=False)
    except (FileNotFoundError, ValueError) as e:
        raise ViewerDataError(f"volume of the series: {e}") from e
    vol = vol.with_array(np.asarray(vol.array, dtype=np.float32))
    mask = None
    if mask_path is not None and mask_path.is_file():
        try:
            mask = read_volume(mask_path, mmap=False)
        except ValueError as e:
            raise ViewerDataError(f"mask of the series: {e}") from e
        if mask.array.shape != vol.array.shape:
            raise ViewerDataError(f"{mask_path}: mask shape {mask.array.shape} differs from the volume's "
                                  f"{vol.array.shape}")
    return vol, mask


class PreprocessedSource:
    """A folder written by ``rsna-aneurysm preprocess`` (manifest, volumes, masks, localizers, train.csv)."""

    kind = "preprocessed"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = PreDir(self.root).manifest
        try:
            self.manifest = pl.read_parquet(path)
        except (OSError, pl.exceptions.PolarsError) as e:
            raise ViewerDataError(f"{path}: not a readable manifest ({e})") from e
        for col in (ID_COL, "volume"):
            if col not in self.manifest.columns:
                raise ViewerDataError(f"{path}: no {col!r} column")
        self.labels = _read_labels(PreDir(self.root).train_csv)
        self.localizers = self._read_localizers()
        cfg_path = PreDir(self.root).config
        cfg = _read_json(cfg_path) if cfg_path.is_file() else {}
        self.ct_window = tuple(cfg.get("ct_window") or DEFAULT_CT_WINDOW)

    def _read_localizers(self) -> pl.DataFrame:
        path = PreDir(self.root).localizers
        if not path.is_file():
            return _empty_localizers()
        try:
            df = pl.read_parquet(path)
        except (OSError, pl.exceptions.PolarsError) as e:
            raise ViewerDataError(f"{path}: not a readable table ({e})") from e
        if ID_COL not in df.columns or "location" not in df.columns:
            return _empty_localizers()
        if "status" not in df.columns:
            df = df.with_columns(status=pl.lit("ok"))
        for c in "ijk":
            if c not in df.columns:
                df = df.with_columns(pl.lit(None, dtype=pl.Float64).alias(c))
        return df.select([pl.col(c).cast(t) for c, t in LOC_SCHEMA.items()])

    def series_table(self) -> pl.DataFrame:
        """``SeriesInstanceUID, Modality, status, error, split, n_localizers`` + the 14 labels (null if unknown)."""
        m = self.manifest
        cols = [pl.col(ID_COL).cast(pl.Utf8),
                (pl.col("Modality") if "Modality" in m.columns else pl.lit(None, dtype=pl.Utf8)).cast(pl.Utf8)
                .alias("Modality"),
                (pl.col("status") if "status" in m.columns else pl.lit("ok")).cast(pl.Utf8).alias("status"),
                (pl.col("error") if "error" in m.columns else pl.lit(None, dtype=pl.Utf8)).cast(pl.Utf8)
                .alias("error")]
        table = m.select(cols).with_columns(split=pl.lit("train"))
        counts = self.localizers.group_by(ID_COL).agg(n_localizers=pl.len().cast(pl.Int64))
        table = table.join(counts, on=ID_COL, how="left").with_columns(pl.col("n_localizers").fill_null(0))
        if self.labels is not None:
            table = table.join(self.labels.select([c for c in self.labels.columns if c != "Modality"]), on=ID_COL,
                               how="left")
        return _with_label_columns(table).sort(ID_COL)

    def load(self, uid: str) -> SeriesData:
        """The series' volume, mask and localizers; raises ViewerDataError when it cannot be read."""
        rows = self.manifest.filter(pl.col(ID_COL).cast(pl.Utf8) == uid)
        if rows.height == 0:
            raise ViewerDataError(f"{self.root}: series {uid} is not in manifest.parquet")
        row = rows.row(0, named=True)
        if row.get("status", "ok") != "ok":
            raise ViewerDataError(f"{uid}: preprocessing failed: {row.get('error')}")
        modality = row.get("Modality")
        mask_rel = row.get("mask")
        vol, mask = _read_pair(self.root / row["volume"], self.root / mask_rel if mask_rel else None, modality)
        locs = self.localizers.filter(pl.col(ID_COL) == uid)
        labels = _labels_of(_with_label_columns(self.labels), uid) if self.labels is not None else None
        warnings = [w for w in str(row.get("warnings") or "").split("; ") if w]
        return SeriesData(uid, modality, vol, mask, locs, labels, str(self.root / row["volume"]), warnings)


def default_cache_dir(data_dir: str | Path) -> Path:
    """``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/rsna-aneurysm/viewer/<hash of the data folder's absolute path>``."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
    return base / "rsna-aneurysm" / "viewer" / digest


class CompetitionSource:
    """A competition folder (train.csv + series/, optionally test/): each series is preprocessed on first view."""

    kind = "competition"

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None, cfg: Any = None) -> None:
        from ..preprocess.pipeline import PreprocessConfig

        self.root = Path(root)
        self.cfg = cfg or PreprocessConfig()
        self.ct_window = tuple(self.cfg.ct_window)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(self.root)
        self.out_dir = self.cache_dir / f"pre_{self.cfg.digest()}"
        parts = []
        train = _read_labels(DataDir(self.root).train_csv)
        if train is not None:
            parts.append(train.with_columns(split=pl.lit("train")))
        test_dir = TestDir(DataDir(self.root).test_dir)
        test = _read_labels(test_dir.test_csv)
        if test is not None:
            solution = _read_labels(test_dir.solution_csv)
            if solution is not None:
                test = test.select(ID_COL).join(solution.select([ID_COL, *LABEL_COLS]), on=ID_COL, how="left")
            parts.append(test.with_columns(split=pl.lit("test")))
        if not parts:
            raise ViewerDataError(f"{self.root}: neither manifest.parquet, train.csv nor test/test.csv: not a data "
                                  "folder the viewer knows")
        parts = [_with_label_columns(p) for p in parts]
        for p in parts:
            if "Modality" not in p.columns:
                p.insert_column(1, pl.Series("Modality", [None] * p.height, dtype=pl.Utf8))
        cols = [ID_COL, "Modality", "split", *LABEL_COLS]
        self.table = pl.concat([p.select(cols) for p in parts], how="vertical_relaxed").unique(ID_COL, keep="first")
        self.raw_localizers = self._raw_localizers()

    def _raw_localizers(self) -> dict[str, list[dict[str, Any]]]:
        path = DataDir(self.root).localizers_csv
        out: dict[str, list[dict[str, Any]]] = {}
        if path.is_file():
            for r in pl.read_csv(path, infer_schema_length=0).iter_rows(named=True):
                out.setdefault(str(r[ID_COL]), []).append(r)
        return out

    def series_dir(self, uid: str, split: str) -> Path:
        base = self.root / "test" if split == "test" else self.root
        return base / "series" / check_uid(uid, base / "series")

    def series_table(self) -> pl.DataFrame:
        """Same columns as :meth:`PreprocessedSource.series_table`; status says whether the folder exists."""
        status = [("ok" if self.series_dir(u, s).is_dir() else "missing series folder")
                  for u, s in self.table.select(ID_COL, "split").iter_rows()]
        counts = [len(self.raw_localizers.get(u, [])) for u in self.table[ID_COL]]
        table = self.table.with_columns(status=pl.Series(status, dtype=pl.Utf8),
                                        error=pl.lit(None, dtype=pl.Utf8),
                                        n_localizers=pl.Series(counts, dtype=pl.Int64))
        return table.select(ID_COL, "Modality", "status", "error", "split", "n_localizers", *LABEL_COLS).sort(ID_COL)

    def _record(self, uid: str, modality: str | None, split: str) -> dict[str, Any]:
        """The cached preprocessing record of a series, computed (and cached) when missing or stale."""
        from ..preprocess.dataset import process_one

        rec_path = self.out_dir / "records" / f"{check_uid(uid, self.out_dir / 'records')}.json"
        if rec_path.is_file():
            try:
                rec = json.loads(rec_path.read_text())
            except (OSError, json.JSONDecodeError):
                rec = {}
            if rec.get("config_digest") == self.cfg.digest() and rec.get("status") == "ok" \
                    and (self.out_dir / str(rec.get("volume"))).is_file():
                return rec
        (self.out_dir / "records").mkdir(parents=True, exist_ok=True)
        data_dir = self.root / "test" if split == "test" else self.root
        return process_one(uid, modality, data_dir, self.out_dir, self.cfg, self.raw_localizers.get(uid, []))

    def load(self, uid: str) -> SeriesData:
        """Preprocess (or read from the cache) one series; raises ViewerDataError when that fails."""
        rows = self.table.filter(pl.col(ID_COL) == uid)
        if rows.height == 0:
            raise ViewerDataError(f"{self.root}: series {uid} is in neither train.csv nor test/test.csv")
        row = rows.row(0, named=True)
        folder = self.series_dir(uid, row["split"])
        if not folder.is_dir():
            raise ViewerDataError(f"{folder}: no such series folder")
        rec = self._record(uid, row["Modality"], row["split"])
        if rec.get("status") != "ok":
            raise ViewerDataError(f"{folder}: could not be loaded and preprocessed: {rec.get('error')}")
        mask_rel = rec.get("mask")
        vol, mask = _read_pair(self.out_dir / rec["volume"], self.out_dir / mask_rel if mask_rel else None,
                               row["Modality"])
        locs = rec.get("localizers") or []
        loc_df = (pl.DataFrame([{c: r.get(c) for c in LOC_SCHEMA} for r in locs], schema=LOC_SCHEMA)
                  if locs else _empty_localizers())
        warnings = [w for w in str(rec.get("warnings") or "").split("; ") if w]
        return SeriesData(uid, row["Modality"], vol, mask, loc_df, _labels_of(self.table, uid), str(folder), warnings)


DataSource = PreprocessedSource | CompetitionSource


def open_data(path: str | Path, cache_dir: str | Path | None = None) -> DataSource:
    """A preprocessed folder (has ``manifest.parquet``) or a competition folder (has ``train.csv`` or ``test/``)."""
    path = Path(path)
    if not path.is_dir():
        raise ViewerDataError(f"{path}: no such data folder")
    if PreDir(path).exists():
        return PreprocessedSource(path)
    return CompetitionSource(path, cache_dir)
