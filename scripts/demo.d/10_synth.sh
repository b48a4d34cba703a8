#!/usr/bin/env bash
# Step 10: a synthetic competition dataset (32 train + 6 test series, ~100 x 100 x 100 voxels each) in $OUT/data.
set -euo pipefail
"$PY" -m rsna_aneurysm.cli synth --out "$OUT/data" --n-series 32 --preset small --seed 0 --workers 2 --overwrite
