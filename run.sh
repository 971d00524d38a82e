#!/usr/bin/env bash
# Run a pipeline stage: ./run.sh workflow.offline_gym sample_configs/sweet_bitter.yaml [--set key=value ...]
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
exec .venv/bin/python workflow/cli.py run "$@"
