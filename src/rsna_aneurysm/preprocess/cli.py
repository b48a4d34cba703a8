"""``rsna-aneurysm inspect`` (one DICOM series' geometry and flags) and ``rsna-aneurysm preprocess`` (a dataset)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli_common import add_command, add_config_argument, overrides, resolve_config


def add_inspect_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "inspect", cmd_inspect, help="load one DICOM series and print its geometry and flags")
    p.add_argument("series", type=Path, help="series folder")
    return p


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..io.dicom import load_series

    if not args.series.is_dir():
        raise FileNotFoundError(f"series folder {args.series} does not exist")
    vol = load_series(args.series)
    info = {
        "series_uid": vol.meta["series_uid"], "shape_ijk": vol.shape_ijk, "spacing_ijk": vol.spacing,
        "origin": vol.origin, "orientation": vol.orientation_code(), "dtype": str(vol.array.dtype),
        "range": [float(vol.array.min()), float(vol.array.max())],
        **{k: vol.meta[k] for k in ("spacing_guessed", "orientation_guessed", "positions_guessed",
                                     "irregular_spacing", "inverted", "warnings")},
    }
    print(json.dumps(info, indent=2, default=str))
    return 0


def add_preprocess_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "preprocess", cmd_preprocess, overrides=True,
                    help="DICOM series -> canonical, resampled, normalised NIfTI volumes + tables",
                    description="Preprocess every series of a competition folder. Settings: --config (JSON of "
                                "PreprocessConfig) and --key value overrides, e.g. --spacing 0.8,0.8,0.8 --n4 mr "
                                "--mask brain.")
    p.add_argument("--data", type=Path, required=True, help="competition folder (train.csv, series/, ...)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    add_config_argument(p, "PreprocessConfig settings")
    p.add_argument("--limit", type=int, default=None, help="only the first N series")
    p.add_argument("--no-retry", action="store_true", help="do not retry series that failed in an earlier run")
    return p


def cmd_preprocess(args: argparse.Namespace) -> int:
    from ..config import load_config
    from .dataset import preprocess_dataset
    from .pipeline import PreprocessConfig

    cfg = load_config(PreprocessConfig, resolve_config(args.config), overrides(args))
    if not args.data.is_dir():
        raise FileNotFoundError(f"competition folder {args.data} does not exist")
    manifest = preprocess_dataset(args.data, args.out, cfg, workers=args.workers, retry_errors=not args.no_retry,
                                  limit=args.limit)
    ok = manifest.filter(manifest["status"] == "ok")
    print(f"{len(ok)}/{len(manifest)} series preprocessed into {args.out}")
    failed = manifest.filter(manifest["status"] != "ok")
    for r in failed.iter_rows(named=True):
        print(f"  FAILED {r['SeriesInstanceUID']}: {r['error']}")
    if len(ok):
        print(ok.group_by("Modality").len().sort("Modality"))
    return 0 if len(ok) or not len(manifest) else 1
