"""``rsna-aneurysm preprocess`` and ``rsna-aneurysm inspect``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _preprocess(args: argparse.Namespace) -> int:
    from ..config import load_config, parse_overrides
    from .dataset import preprocess_dataset
    from .pipeline import PreprocessConfig

    cfg = load_config(PreprocessConfig, args.config, parse_overrides(args.overrides))
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


def _inspect(args: argparse.Namespace) -> int:
    from ..io.dicom import load_series

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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preprocess", help="DICOM series -> canonical, resampled, normalised NIfTI volumes + tables",
                       description="Preprocess every series of a competition folder. Settings: --config FILE "
                                   "(JSON of PreprocessConfig) and --key value overrides, e.g. --spacing 0.8,0.8,0.8 "
                                   "--n4 mr --mask brain.")
    p.add_argument("--data", type=Path, required=True, help="competition folder (train.csv, series/, ...)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.add_argument("--config", type=Path, default=None, help="JSON file of PreprocessConfig settings")
    p.add_argument("--limit", type=int, default=None, help="only the first N series")
    p.add_argument("--no-retry", action="store_true", help="do not retry series that failed in an earlier run")
    p.set_defaults(func=_preprocess, accepts_overrides=True)

    q = sub.add_parser("inspect", help="load one DICOM series and print its geometry and flags")
    q.add_argument("series", type=Path, help="series folder")
    q.set_defaults(func=_inspect)
