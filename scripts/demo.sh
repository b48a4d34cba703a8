#!/usr/bin/env bash
# End-to-end demo on synthetic data: generate a competition-shaped dataset, then run every step of the kit on it.
# Steps live in scripts/demo.d/*.sh and run in name order; each sees $PY, $OUT and $ROOT.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
OUT="${1:-$ROOT/demo_out}"
export OUT PY ROOT
mkdir -p "$OUT"
start=$(date +%s)
for step in "$ROOT"/scripts/demo.d/*.sh; do
  echo
  echo "=== $(basename "$step" .sh) ==="
  bash "$step"
done
echo
echo "Demo finished in $(( $(date +%s) - start )) s; outputs in $OUT"
