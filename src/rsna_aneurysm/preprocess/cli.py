"""``rsna-aneurysm inspect`` (one DICOM series' geometry and flags), ``rsna-aneurysm preprocess`` (a dataset) and
``rsna-aneurysm nnunet-export`` (the vessel-segmentation set in nnU-Net v2's raw format)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli_common import UsageError, add_command, add_config_argument, overrides, resolve_config


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


def _dataset_id(value: str) -> int:
    if not value.strip().isdigit() or not 1 <= int(value) <= 999:
        raise argparse.ArgumentTypeError(f"--dataset-id takes an integer 1..999, got {value!r}")
    return int(value)


def add_nnunet_export_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "nnunet-export", cmd_nnunet_export,
                    help="export the vessel segmentations of a preprocessed folder as an nnU-Net v2 raw dataset",
                    description="Write OUT/DatasetXXX_NAME/ (imagesTr/, labelsTr/, dataset.json, cases.csv) from "
                                "every ok series of PRE that has a vessel segmentation, for nnUNetv2_plan_and_"
                                "preprocess and nnUNetv2_train (nnunetv2 is not a dependency of the kit).")
    p.add_argument("--pre", type=Path, required=True, help="preprocessed folder (rsna-aneurysm preprocess)")
    p.add_argument("--out", type=Path, required=True, help="nnU-Net raw folder (e.g. $nnUNet_raw)")
    p.add_argument("--dataset-id", type=_dataset_id, default=501, help="nnU-Net dataset id 1..999 (default 501)")
    p.add_argument("--name", default="RSNAVessels", help="dataset name (default RSNAVessels)")
    p.add_argument("--link", action="store_true", help="symlink the images instead of copying them")
    return p


def cmd_nnunet_export(args: argparse.Namespace) -> int:
    from .nnunet_export import dataset_folder_name, export_nnunet_raw

    try:
        dataset_folder_name(args.dataset_id, args.name)
    except ValueError as e:
        raise UsageError(str(e)) from e
    folder = export_nnunet_raw(args.pre, args.out, dataset_id=args.dataset_id, name=args.name, link=args.link)
    n = json.loads((folder / "dataset.json").read_text())["numTraining"]
    print(f"{n} cases written to {folder}")
    return 0
