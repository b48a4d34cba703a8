#!/usr/bin/env bash
# The named benchmark split (bench-v1, `rsna-aneurysm synth --benchmark`): every pipeline trained on its 120
# training series with fold 0 of 4 held out, then scored side by side out-of-fold and on its 100 test series, with
# bootstrap intervals (docs/benchmark.md). Steps that already ran are skipped (each writes its own outputs), so a
# rerun resumes. About 45 minutes on a 2-core CPU; BENCH_OUT sets the folder (default bench_out/).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
OUT="${BENCH_OUT:-$ROOT/bench_out}"
mkdir -p "$OUT"
W="$OUT/weights"
FOLDS=(--folds-table "$OUT/data/folds.parquet")
run() { echo; echo "=== $1 ==="; shift; "$PY" -m rsna_aneurysm.cli "$@"; }
start=$(date +%s)
[ -f "$OUT/data/train.csv" ] || run synth synth --benchmark --out "$OUT/data" --workers 2
[ -f "$OUT/pre/manifest.parquet" ] || run preprocess preprocess --data "$OUT/data" --out "$OUT/pre" --workers 2
[ -f "$OUT/pre/region_targets.parquet" ] || run "region targets" region targets --pre "$OUT/pre" --data "$OUT/data"
[ -f "$OUT/data/folds.parquet" ] || run folds folds --data "$OUT/data" --k 4 --seed 0 --read-patient-ids \
  --out "$OUT/data/folds.parquet"
# Today's two-stage recipe: patch cache, fine model (fold 0), region finder.
[ -f "$OUT/cache/index.parquet" ] || run cache cache --data "$OUT/pre" --out "$OUT/cache" \
  --config unet3d_region_demo --workers 2 "${FOLDS[@]}"
FINE="$W/unet3d_region_demo"
[ -f "$FINE/fold_0/best.pt" ] || run "fine model" train --config unet3d_region_demo --data "$OUT/pre" \
  --cache "$OUT/cache" --out "$W" --folds 0 "${FOLDS[@]}"
[ -f "$FINE/region/region.json" ] || run "region finder" region train --pre "$OUT/pre" --weights "$FINE" \
  --holdout-fold 0 "${FOLDS[@]}" | grep -v '"per_series"'
[ -f "$FINE/predictor.json" ] || echo '{"tta_flip": true}' > "$FINE/predictor.json"
# The vessel-guided recipe: segmenter on the labelled series, ROI classifier with and without its pretraining.
[ -f "$W/vessels/vessels/segmenter.pt" ] || run "vessel segmenter" vessels train --pre "$OUT/pre" --out "$W/vessels"
[ -f "$W/vessel_roi/fold_0/best.pt" ] || run "ROI classifier" roi train --pre "$OUT/pre" --segmenter "$W/vessels" \
  --out "$W/vessel_roi" --region-from "$FINE" --config roi_cpu --folds 0 "${FOLDS[@]}"
[ -f "$W/vessel_roi_scratch/fold_0/best.pt" ] || run "ROI classifier, no segmentation pretraining" roi train \
  --pre "$OUT/pre" --segmenter "$W/vessels" --out "$W/vessel_roi_scratch" --cache "$W/vessel_roi/roi_cache" \
  --region-from "$FINE" --config roi_cpu --folds 0 --pretrained false "${FOLDS[@]}"
run "pipelines report" pipelines --weights "$FINE" --folds 0 --test "$OUT/data" --out "$OUT/report" \
  --roi "vessel-ROI=$W/vessel_roi" --roi "vessel-ROI, no seg. pretraining=$W/vessel_roi_scratch"
echo
echo "Benchmark finished in $(( $(date +%s) - start )) s; report in $OUT/report/report.md"
