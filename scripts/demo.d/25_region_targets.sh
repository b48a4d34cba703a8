#!/usr/bin/env bash
# Step 25: region targets (centre and extent of the arterial region per series) and the location atlas, for the
# two-stage pipeline; on synthetic data from the generator's vessel tree, on real data from the segmentations.
set -euo pipefail
"$PY" -m rsna_aneurysm.cli region targets --pre "$OUT/pre" --data "$OUT/data"
