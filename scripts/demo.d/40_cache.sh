#!/usr/bin/env bash
# Step 40: cut the training patches once (positives around each aneurysm, negatives inside the arterial region) into $OUT/cache;
# a rerun reuses every intact entry.
set -euo pipefail
FOLDS=()
[ -f "$OUT/data/folds.parquet" ] && FOLDS=(--folds-table "$OUT/data/folds.parquet")
"$PY" -m rsna_aneurysm.cli cache --data "$OUT/pre" --out "$OUT/cache" --config unet3d_region_demo --workers 2 "${FOLDS[@]}"
"$PY" - <<'PY'
import os, polars as pl
idx = pl.read_parquet(f"{os.environ['OUT']}/cache/index.parquet")
print(idx.group_by("fold", "kind").len().pivot(on="kind", index="fold", values="len").sort("fold"))
PY
