#!/usr/bin/env bash
# Run the lint and the whole test suite: ./test.sh [pytest arguments]
# Adds the test layers to .venv first: google recsim (with tensorflow, for the parity tests) and pytest/ruff. The
# Ray Serve test runs in .venv-ray (runtime + ray[serve]): ray and tensorflow 2.15 cannot share a virtualenv.
set -euo pipefail
cd "$(dirname "$0")"
BOOTSTRAP_LAYERS="runtime recsim dev" source scripts/bootstrap.sh
.venv/bin/ruff check .
RAY_TEST=tests/serving/test_ray_serve.py
if [ $# -gt 0 ]; then
  exec .venv/bin/python -m pytest -q --durations=15 "$@"
fi
.venv/bin/python -m pytest -q --durations=15 --ignore="$RAY_TEST"
BOOTSTRAP_VENV=.venv-ray BOOTSTRAP_LAYERS="runtime ray dev" source scripts/bootstrap.sh
exec .venv-ray/bin/python -m pytest -q -p no:cacheprovider "$RAY_TEST"
