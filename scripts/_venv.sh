# Sourced by demo.sh and test.sh: make sure .venv exists and holds the kit with its test extras.
# PyTorch: a range is declared in setup.cfg; here we pin the CPU-friendly pair that imports together on a
# fresh machine (torchvision, which timm needs, must match torch exactly).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RSNA_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.rsna-installed"
if [ ! -x "$PY" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$ROOT/setup.cfg" -nt "$STAMP" ]; then
  echo "[setup] installing the kit and its dependencies into $VENV (first run: a few minutes)"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "torch==${RSNA_TORCH_VERSION:-2.14.1}" "torchvision==${RSNA_TORCHVISION_VERSION:-0.29.1}"
  "$PY" -m pip install -q -e "$ROOT[dev,codecs,kaggle,bench,viewer]"
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
