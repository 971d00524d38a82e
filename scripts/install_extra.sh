#!/usr/bin/env bash
# Add an optional layer to .venv: ./scripts/install_extra.sh recsim   (google recsim + tensorflow, +1.1 GB)
#                                  ./scripts/install_extra.sh dev      (pytest, ruff)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 recsim|dev ..." >&2; exit 2; }
BOOTSTRAP_LAYERS="runtime $*" source "$(dirname "$0")/bootstrap.sh"
