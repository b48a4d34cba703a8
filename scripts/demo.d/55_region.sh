#!/usr/bin/env bash
# Step 55: stage one of the two-stage pipeline: train the region finder into the fine model's run folder
# (weights/<run>/region/), holding out fold 0 (the fine model's validation fold) and reporting it there. 20 epochs
# instead of the default 40 keep the demo short (median centre error on fold 0: 1.9 mm against 1.7 mm).
set -euo pipefail
HOLDOUT="${DEMO_FOLDS:-0}"
[[ "$HOLDOUT" =~ ^[0-9]+$ ]] || HOLDOUT=-1  # several folds trained: the finder trains on every series
FOLDS=()
[ -f "$OUT/data/folds.parquet" ] && FOLDS=(--folds-table "$OUT/data/folds.parquet")
"$PY" -m rsna_aneurysm.cli region train --pre "$OUT/pre" --weights "$OUT/weights/unet3d_region_demo" \
  --holdout-fold "$HOLDOUT" "${FOLDS[@]}" --finder.epochs 20 | grep -v '"per_series"'
