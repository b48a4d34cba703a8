"""``rsna-aneurysm synth``: write a synthetic dataset in the competition's layout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_common import UsageError, add_command


def add_synth_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "synth", cmd_synth,
                    help="write a synthetic competition dataset (CSVs, DICOM series, segmentations, test layout)",
                    description="Write a synthetic dataset in the competition's exact layout (docs/synthetic_data.md).")
    p.add_argument("--out", type=Path, required=True, help="output folder (the competition input folder)")
    p.add_argument("--n-series", type=int, required=True, help="number of train series")
    p.add_argument("--preset", choices=("tiny", "small", "full"), default="small",
                   help="image size: tiny (unit tests), small (CPU demo), full (512 x 512 x ~300)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    p.add_argument("--n-test", type=int, default=None, help="test series beyond the train ones (default max(2, N/5))")
    p.add_argument("--test-cover-labels", action="store_true",
                   help="every test label column gets both classes, so the metric is defined on test/solution.csv "
                        "(needs --n-test >= 16, the default then)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.add_argument("--overwrite", action="store_true", help="replace a synthetic dataset already in --out")
    return p


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import generate_dataset

    try:
        summary = generate_dataset(args.out, args.n_series, preset=args.preset, seed=args.seed, n_test=args.n_test,
                                   workers=args.workers, overwrite=args.overwrite,
                                   progress=sys.stderr.isatty(), test_cover_labels=args.test_cover_labels)
    except (FileExistsError, ValueError) as e:  # an existing dataset without --overwrite, or bad counts
        raise UsageError(str(e)) from e
    print(json.dumps(summary, indent=1))
    return 0
