"""``rsna-aneurysm package`` (fill the Kaggle datasets and kernel folder) and ``rsna-aneurysm push`` (upload them).

Owner and slugs are settings (``KaggleConfig``): ``--owner NAME`` and the other ``--key value`` overrides, or
``--config``. Credentials are the kaggle CLI's own (``~/.kaggle/kaggle.json`` or ``KAGGLE_CONFIG_DIR``).
"""

from __future__ import annotations

import argparse

from ..cli_common import PROG, add_command, add_config_argument, add_folds_argument, add_weights_argument, overrides


def add_package_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "package", cmd_package, overrides=True,
                    help="fill the Kaggle weights/code/wheels datasets and the kernel folder",
                    description="Settings: --owner NAME and the other KaggleConfig keys as --key value, or --config.")
    add_weights_argument(p, "training run folder")
    p.add_argument("--out", default="build/kaggle", help="output folder (default build/kaggle)")
    add_folds_argument(p, "folds to ship (default: every fold)")
    p.add_argument("--checkpoint", default="best", help="which checkpoint of each fold (default best)")
    p.add_argument("--no-wheels", action="store_true", help="do not download wheels (offline; tests)")
    p.add_argument("--wheel-dir", action="append", help="also ship the *.whl files of this folder (repeatable)")
    p.add_argument("--predictor-config", help="JSON of predictor settings for the kernel (default: the run's "
                                              "predictor.json, else the defaults)")
    p.add_argument("--source", help="the kit's source tree (default: found above the installed package)")
    add_config_argument(p, "KaggleConfig settings")
    return p


def cmd_package(args: argparse.Namespace) -> int:
    from ..cli_common import resolve_config
    from ..config import load_config
    from .package import KaggleConfig, package

    cfg = load_config(KaggleConfig, resolve_config(args.config), overrides(args))
    folders = package(args.weights, cfg, args.out, args.folds, args.checkpoint, download=not args.no_wheels,
                      wheel_dirs=args.wheel_dir, source=args.source, predictor_config=args.predictor_config)
    for part, folder in folders.items():
        files = sorted(p.name for p in folder.iterdir())
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1e6
        print(f"{part:8s} {folder}  ({len(files)} files, {size:.1f} MB): {', '.join(files)}")
    print(f"next: {PROG} push --dir {args.out} --dry-run")
    return 0


def add_push_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "push", cmd_push, help="upload the packaged datasets and push the kernel with the kaggle CLI")
    p.add_argument("--dir", default="build/kaggle", help="the folder `package` filled (default build/kaggle)")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the commands; upload nothing")
    p.add_argument("--message", "-m", default="rsna-aneurysm package", help="version notes for dataset updates")
    p.add_argument("--only", type=lambda v: v.split(","), help="datasets, kernel or both (default both)")
    p.add_argument("--public", action="store_true", help="create new datasets as public (default private)")
    p.add_argument("--wait-s", type=float, default=600.0,
                   help="wait this long for each dataset to be ready before pushing the kernel (default 600)")
    return p


def cmd_push(args: argparse.Namespace) -> int:
    from .push import push

    steps = push(args.dir, args.message, dry_run=args.dry_run, only=args.only, public=args.public,
                 wait_s=args.wait_s)
    for step in steps:
        cmd = "kaggle " + " ".join(step.cmd)
        if args.dry_run:
            print(f"would run: {cmd}    # {step.what}")
        else:
            print(f"ok: {step.what}\n    {cmd}\n    " + "\n    ".join(step.output.strip().splitlines()[-3:]))
    if args.dry_run:
        print("dry run: every metadata file passed the checks; nothing was uploaded")
    return 0
