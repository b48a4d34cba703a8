#!/usr/bin/env bash
# Run the test suite (creates .venv and installs on first use). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$ROOT"
exec "$PY" -m pytest -n 2 --dist loadfile "$@"
