#!/usr/bin/env bash
# Run the lint and the whole test suite: ./test.sh [pytest arguments]
# Adds the test layers to .venv first: google recsim (with tensorflow, for the parity tests) and pytest/ruff.
set -euo pipefail
cd "$(dirname "$0")"
BOOTSTRAP_LAYERS="runtime recsim dev" source scripts/bootstrap.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q --durations=15 "$@"
