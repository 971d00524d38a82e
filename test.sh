#!/usr/bin/env bash
# Run the lint and the whole test suite: ./test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q --durations=15 "$@"
