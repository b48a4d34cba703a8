"""``rsna-aneurysm package`` (fill the Kaggle datasets and kernel folder) and ``rsna-aneurysm push`` (upload them).

Owner and slugs are settings (``KaggleConfig``): ``--owner NAME`` and the other ``--key value`` overrides, or
``--config FILE``. Credentials are the kaggle CLI's own (``~/.kaggle/kaggle.json`` or ``KAGGLE_CONFIG_DIR``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _folds(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--folds takes a comma list of integers, got {value!r}") from None


def cmd_package(args: argparse.Namespace) -> int:
    from ..config import ConfigError, load_config, parse_overrides
    from .package import KaggleConfig, PackageError, package

    try:
        cfg = load_config(KaggleConfig, args.config, parse_overrides(args.overrides or []))
        folders = package(args.weights, cfg, args.out, args.folds, args.checkpoint, download=not args.no_wheels,
                          wheel_dirs=args.wheel_dir, source=args.source, predictor_config=args.predictor_config)
    except (PackageError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for part, folder in folders.items():
        files = sorted(p.name for p in folder.iterdir())
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1e6
        print(f"{part:8s} {folder}  ({len(files)} files, {size:.1f} MB): {', '.join(files)}")
    print(f"next: rsna-aneurysm push --dir {args.out} --dry-run")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .push import PushError, push

    try:
        steps = push(args.dir, args.message, dry_run=args.dry_run, only=args.only, public=args.public,
                     wait_s=args.wait_s)
    except PushError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for step in steps:
        cmd = "kaggle " + " ".join(step.cmd)
        if args.dry_run:
            print(f"would run: {cmd}    # {step.what}")
        else:
            print(f"ok: {step.what}\n    {cmd}\n    " + "\n    ".join(step.output.strip().splitlines()[-3:]))
    if args.dry_run:
        print("dry run: every metadata file passed the checks; nothing was uploaded")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("package", help="fill the Kaggle weights/code/wheels datasets and the kernel folder",
                       description="Settings: --owner NAME and the other KaggleConfig keys as --key value, or "
                                   "--config FILE.")
    p.add_argument("--weights", required=True, help="training run folder, weights/<run>")
    p.add_argument("--out", default="build/kaggle", help="output folder (default build/kaggle)")
    p.add_argument("--folds", type=_folds, help="comma list of folds to ship (default: every fold)")
    p.add_argument("--checkpoint", default="best", help="which checkpoint of each fold (default best)")
    p.add_argument("--no-wheels", action="store_true", help="do not download wheels (offline; tests)")
    p.add_argument("--wheel-dir", action="append", help="also ship the *.whl files of this folder (repeatable)")
    p.add_argument("--predictor-config", help="JSON of predictor settings for the kernel (default: the run's "
                                              "predictor.json, else the defaults)")
    p.add_argument("--source", help="the kit's source tree (default: found above the installed package)")
    p.add_argument("--config", type=Path, help="JSON file of KaggleConfig settings")
    p.set_defaults(func=cmd_package, accepts_overrides=True)

    q = sub.add_parser("push", help="upload the packaged datasets and push the kernel with the kaggle CLI")
    q.add_argument("--dir", default="build/kaggle", help="the folder `package` filled (default build/kaggle)")
    q.add_argument("--dry-run", action="store_true", help="check everything and print the commands; upload nothing")
    q.add_argument("--message", "-m", default="rsna-aneurysm package", help="version notes for dataset updates")
    q.add_argument("--only", type=lambda v: v.split(","), help="datasets, kernel or both (default both)")
    q.add_argument("--public", action="store_true", help="create new datasets as public (default private)")
    q.add_argument("--wait-s", type=float, default=600.0,
                   help="wait this long for each dataset to be ready before pushing the kernel (default 600)")
    q.set_defaults(func=cmd_push)
