"""``rsna-aneurysm synth``: write a synthetic dataset in the competition's layout, or the named benchmark split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli_common import UsageError, add_command

# Options that define a dataset; ``--benchmark`` fixes them all, so giving one with it is an error.
_DATASET_OPTIONS = ("n_series", "preset", "seed", "n_test", "test_cover_labels")


def add_synth_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = add_command(sub, "synth", cmd_synth,
                    help="write a synthetic competition dataset (CSVs, DICOM series, segmentations, test layout)",
                    description="Write a synthetic dataset in the competition's exact layout (docs/synthetic_data.md).")
    p.add_argument("--out", type=Path, required=True, help="output folder (the competition input folder)")
    p.add_argument("--benchmark", action="store_true",
                   help="write the named benchmark split (fixed seed, counts and preset bench; "
                        "rsna_aneurysm.data.synth.BENCHMARK) instead of --n-series / --preset / --seed / --n-test")
    p.add_argument("--n-series", type=int, default=None, help="number of train series (required without --benchmark)")
    p.add_argument("--preset", choices=("tiny", "small", "full", "bench"), default=None,
                   help="image size: tiny (unit tests), small (CPU demo, the default), full (512 x 512 x ~300), "
                        "bench (native-like spacing, realistic anatomy, contrast and look-alikes)")
    p.add_argument("--seed", type=int, default=None, help="same seed, same bytes (default 0)")
    p.add_argument("--n-test", type=int, default=None, help="test series beyond the train ones (default max(2, N/5))")
    p.add_argument("--test-cover-labels", action="store_true", default=None,
                   help="every test label column gets both classes, so the metric is defined on test/solution.csv "
                        "(needs --n-test >= 16, the default then)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.add_argument("--overwrite", action="store_true", help="replace a synthetic dataset already in --out")
    return p


def cmd_synth(args: argparse.Namespace) -> int:
    from . import synth

    progress = sys.stderr.isatty()
    try:
        if args.benchmark:
            given = [f"--{name.replace('_', '-')}" for name in _DATASET_OPTIONS if getattr(args, name) is not None]
            if given:
                raise ValueError(f"--benchmark fixes the dataset; drop {', '.join(given)}")
            summary = synth.generate_benchmark(args.out, synth.BENCHMARK, workers=args.workers,
                                               overwrite=args.overwrite, progress=progress)
        else:
            if args.n_series is None:
                raise ValueError("--n-series is required (or --benchmark for the named benchmark split)")
            summary = synth.generate_dataset(args.out, args.n_series, preset=args.preset or "small",
                                             seed=0 if args.seed is None else args.seed, n_test=args.n_test,
                                             workers=args.workers, overwrite=args.overwrite, progress=progress,
                                             test_cover_labels=bool(args.test_cover_labels))
    except (FileExistsError, ValueError) as e:  # an existing dataset without --overwrite, or bad counts
        raise UsageError(str(e)) from e
    print(json.dumps(summary, indent=1))
    return 0
