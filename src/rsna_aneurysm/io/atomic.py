"""Atomic writes: write to a temporary name beside the target, then rename, so a reader or an interrupted run never
sees a half-written file. Every final output of the kit that a reader or a rerun depends on goes through here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces ``path``, on error it is removed.

    The temporary name keeps the target's suffixes (``.nii.gz`` writers pick compression from them).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffixes}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_parquet(df: pl.DataFrame, path: str | Path) -> Path:
    """Write a polars table to ``path`` as Parquet, atomically; returns the path."""
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)
    return Path(path)


def atomic_write_csv(df: pl.DataFrame, path: str | Path) -> Path:
    """Write a polars table to ``path`` as CSV, atomically; returns the path."""
    with atomic_path(path) as tmp:
        df.write_csv(tmp)
    return Path(path)
