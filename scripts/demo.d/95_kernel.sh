#!/usr/bin/env bash
# Step 95, the full submission loop: out-of-fold table and thresholds for the demo run, package it into the three
# Kaggle datasets + kernel folder (offline: --no-wheels), run the kernel's code file through the local gateway on the
# synthetic test layout, score submission.parquet, print the score table and the time per series.
set -euo pipefail
RUN="${DEMO_RUN:-$OUT/weights/unet3d_region_demo}"
[ -f "$RUN/config.json" ] || RUN="$(ls -td "$OUT"/weights/*/ 2>/dev/null | head -1)"
RUN="${RUN%/}"
if [ -z "$RUN" ] || [ ! -f "$RUN/config.json" ]; then
  echo "no trained run under $OUT/weights (set DEMO_RUN=weights/<run>)" >&2
  exit 1
fi
echo "run: $RUN"
# Kernel settings of the demo run (read by oof, shipped by package): no flip TTA, to keep the CPU demo short.
[ -f "$RUN/predictor.json" ] || echo '{"tta_flip": false}' > "$RUN/predictor.json"
if [ ! -f "$RUN/thresholds.json" ]; then
  "$PY" -m rsna_aneurysm.cli oof --weights "$RUN" --score --bootstrap 0 | tail -n 25
fi
if [ -d "$RUN/region" ] && [ ! -f "$RUN/pipelines/report.md" ]; then
  echo "--- whole-scan vs two-stage: same fine model, same out-of-fold series (add --test DATA to score the test set too) ---"
  ROI=()
  [ -f "$OUT/weights/vessel_roi/roi.json" ] && ROI=(--roi "vessel-ROI=$OUT/weights/vessel_roi")
  "$PY" -m rsna_aneurysm.cli pipelines --weights "$RUN" "${ROI[@]}" 2> "$OUT/pipelines.log" \
    || { tail -n 20 "$OUT/pipelines.log" >&2; exit 1; }
fi
"$PY" -m rsna_aneurysm.cli package --weights "$RUN" --out "$OUT/kaggle" --no-wheels --owner demo-user
"$PY" -m rsna_aneurysm.cli push --dir "$OUT/kaggle" --dry-run

WORK="$OUT/kernel_work"
rm -rf "$WORK" && mkdir -p "$WORK"
RSNA_INPUT_ROOT="$OUT/kaggle/datasets" RSNA_WORK_DIR="$WORK" RSNA_TEST_DATA="$OUT/data" \
RSNA_SUBMISSION="$OUT/submission.parquet" RSNA_SHARE_ROOT="$WORK/share" \
  "$PY" "$OUT/kaggle/kernels/rsna-aneurysm-submit/submit.py" 2>"$WORK/kernel.log" | tee "$WORK/kernel.out"

"$PY" -m rsna_aneurysm.cli score --pred "$OUT/submission.parquet" --labels "$OUT/data/test/solution.csv" \
  --out "$OUT/submission_report" --bootstrap 200 | tail -n 30
"$PY" - <<'PY'
import json, os
out = os.environ["OUT"]
rep = json.load(open(f"{out}/submission_report/report.json"))
line = next(l for l in open(f"{out}/kernel_work/kernel.out") if l.startswith("predictor summary: "))
summary = json.loads(line[len("predictor summary: "):])
t = summary.get("mean_s", {})
partial = f" ({rep['label']})" if rep["partial"] else ""
ap = rep["aneurysm_auc"]
print(f"synthetic test score (weighted AUC): {rep['score']:.4f}{partial} on {rep['n_series']} series; "
      f"Aneurysm Present AUC {'-' if ap is None else f'{ap:.4f}'}")
print(f"per series ({summary.get('pipeline', 'whole-scan')} pipeline): {t.get('total_s', float('nan')):.2f} s (read "
      f"{t.get('read_s', 0):.2f}, preprocess {t.get('preprocess_s', 0):.2f}, region {t.get('region_s', 0):.2f}, "
      f"model {t.get('model_s', 0):.2f}, aggregate {t.get('aggregate_s', 0):.3f}); "
      f"{summary['predicted']} predicted, {summary['fallback']} fallback rows")
PY
