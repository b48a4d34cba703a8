#!/usr/bin/env bash
# Step 60 (optional, DEMO_VESSEL_ROI=1; about 4 more minutes): the vessel-guided ROI pipeline on the demo data.
# The vessel segmenter trains on the series with vessel labels, then the ROI classifier (fold 0, the fine model's
# validation fold) into $OUT/weights/vessel_roi, with the region finder as the locator's fallback; the pipelines
# report of step 95 then scores it beside whole-scan and two-stage. The kernel keeps the two-stage default, which
# wins on the benchmark split (README).
set -euo pipefail
if [ "${DEMO_VESSEL_ROI:-0}" != "1" ]; then
  echo "skipped (set DEMO_VESSEL_ROI=1 to train the vessel-ROI pipeline too)"
  exit 0
fi
FOLDS=()
[ -f "$OUT/data/folds.parquet" ] && FOLDS=(--folds-table "$OUT/data/folds.parquet")
"$PY" -m rsna_aneurysm.cli vessels train --pre "$OUT/pre" --out "$OUT/weights/vessels" --epochs 24
"$PY" -m rsna_aneurysm.cli roi train --pre "$OUT/pre" --segmenter "$OUT/weights/vessels" \
  --out "$OUT/weights/vessel_roi" --region-from "$OUT/weights/unet3d_region_demo" --config roi_cpu \
  --folds "${DEMO_FOLDS:-0}" --epochs 10 "${FOLDS[@]}"
