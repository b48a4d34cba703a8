#!/usr/bin/env bash
# Step 10: a synthetic competition dataset in $OUT/data: 32 train series and 16 test series (~100^3 voxels each);
# the test split holds both classes in every label column, so the leaderboard metric is defined on it.
set -euo pipefail
"$PY" -m rsna_aneurysm.cli synth --out "$OUT/data" --n-series 32 --preset small --seed 0 --workers 2 --overwrite \
  --test-cover-labels
