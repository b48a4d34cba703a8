#!/usr/bin/env bash
# Step 10: a synthetic competition dataset in $OUT/data: 96 train series and 24 test series (~100^3 voxels each;
# DEMO_N_SERIES and DEMO_N_TEST change the counts). The test split holds both classes in every label column, so the
# leaderboard metric is defined on it.
set -euo pipefail
"$PY" -m rsna_aneurysm.cli synth --out "$OUT/data" --n-series "${DEMO_N_SERIES:-96}" --n-test "${DEMO_N_TEST:-24}" \
  --preset small --seed 0 --workers 2 --overwrite --test-cover-labels
