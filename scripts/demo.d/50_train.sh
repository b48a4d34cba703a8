#!/usr/bin/env bash
# Step 50: train the fine model of the two-stage demo (Tiny 3D U-Net, focal + heatmap loss) on the cached patches, fold 0 by default
# (DEMO_FOLDS=all or a comma list for more), into $OUT/weights/unet3d_region_demo; print the validation metrics.
set -euo pipefail
FOLDS=()
[ -f "$OUT/data/folds.parquet" ] && FOLDS=(--folds-table "$OUT/data/folds.parquet")
"$PY" -m rsna_aneurysm.cli train --config unet3d_region_demo --data "$OUT/pre" --cache "$OUT/cache" \
  --out "$OUT/weights" --folds "${DEMO_FOLDS:-0}" "${FOLDS[@]}"
"$PY" - <<'PY'
import glob, os, polars as pl
run = f"{os.environ['OUT']}/weights/unet3d_region_demo"
for path in sorted(glob.glob(f"{run}/fold_*/metrics.csv")):
    m = pl.read_csv(path).select("epoch", "train_loss", "val_loss", "score", "auc", "acc", "sens", "spec", "f2",
                                 "train_patches_per_s")
    print(path.split("/")[-2])
    print(m.with_columns(pl.exclude("epoch").round(3)))
print(f"checkpoints and curves: {run}/fold_*/(best.pt, last.pt, metrics.csv, curves.png)")
PY
