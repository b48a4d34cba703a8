"""Per-epoch training history: the metrics CSV and a PNG of the curves, rewritten after every epoch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl

from ..io.atomic import atomic_path, atomic_write_csv

CURVES = (("loss", ("train_loss", "val_loss")), ("validation", ("score", "auc", "f2", "sens", "spec")))


def _cell(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return ";".join(map(str, v))
    return v


def write_metrics_csv(history: list[dict[str, Any]], path: str | Path) -> Path:
    """One row per epoch; list values (e.g. skipped columns) joined with ';'."""
    path = Path(path)
    rows = [{k: _cell(v) for k, v in row.items()} for row in history]
    return atomic_write_csv(pl.DataFrame(rows, infer_schema_length=None), path)


def plot_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss and validation metrics against the epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, len(CURVES), figsize=(11, 4))
    epochs = [row["epoch"] for row in history]
    for ax, (name, keys) in zip(axes, CURVES):
        for key in keys:
            ys = [row.get(key) for row in history]
            ys = [math.nan if y is None else float(y) for y in ys]
            if any(not math.isnan(y) for y in ys):
                ax.plot(epochs, ys, marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # the temporary name keeps ".png": savefig picks the format from it
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return path
