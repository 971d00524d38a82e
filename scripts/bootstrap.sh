#!/usr/bin/env bash
# Create or reuse the virtualenv at .venv, install the pinned stack into it, and make sure Java 17+ is present.
# Sourced by run.sh (the runtime layer) and test.sh (runtime + recsim + dev); scripts/install_extra.sh adds a
# layer by hand. Safe to run again: a layer reinstalls only when its requirements files change.
#   BOOTSTRAP_LAYERS="runtime recsim dev" source scripts/bootstrap.sh
# BOOTSTRAP_VENV names another virtualenv under the checkout (test.sh runs the Ray Serve test in .venv-ray: ray
# needs protobuf >= 5, tensorflow 2.15 < 5, so they cannot share one).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/${BOOTSTRAP_VENV:-.venv}"
REQ="$ROOT/requirements"

log() { echo "[bootstrap] $*" >&2; }

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  log "Python 3.11 is required (the pinned torch 2.13.0 CPU wheel is built for it); set PYTHON=/path/to/python3.11"
  return 1
}

layer_files() {  # the files that define a layer (its stamp hashes them)
  case "$1" in
    runtime) echo "$REQ/runtime.txt $REQ/runtime-no-deps.txt $ROOT/setup.cfg" ;;
    recsim) echo "$REQ/recsim.txt $REQ/recsim-no-deps.txt" ;;
    dev) echo "$REQ/dev.txt" ;;
    ray) echo "$REQ/ray.txt" ;;
    *) log "unknown layer '$1' (runtime, recsim, dev, ray)"; return 1 ;;
  esac
}

ensure_layer() {
  local layer="$1" stamp="$VENV/.stamp-$1" want files
  files="$(layer_files "$layer")"
  # a layer's stamp includes the runtime's, so reinstalling the runtime reapplies the layers above it
  want="$( (cat $files; [ "$layer" = runtime ] || cat "$VENV/.stamp-runtime" 2>/dev/null) | sha256sum | cut -c1-16)"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  log "installing the $layer layer into $VENV (a few minutes the first time)"
  local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  case "$layer" in
    runtime)
      "${pip[@]}" --upgrade pip
      "${pip[@]}" -r "$REQ/runtime.txt"
      "${pip[@]}" --no-deps -r "$REQ/runtime-no-deps.txt"
      "${pip[@]}" --no-deps --no-build-isolation -e "$ROOT" ;;
    recsim)
      # keep the runtime's setuptools pin while tensorflow resolves
      "${pip[@]}" -r "$REQ/recsim.txt" "$(grep '^setuptools' "$REQ/runtime.txt")"
      "${pip[@]}" --no-deps -r "$REQ/recsim-no-deps.txt" ;;
    dev)
      "${pip[@]}" -r "$REQ/dev.txt" ;;
    ray)
      "${pip[@]}" -r "$REQ/ray.txt" ;;
  esac
  echo "$want" > "$stamp"
  log "$layer layer ready"
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    local py; py="$(find_python)"
    log "creating $VENV with $py"
    "$py" -m venv "$VENV"
  fi
  local layer
  for layer in ${BOOTSTRAP_LAYERS:-runtime}; do
    ensure_layer "$layer"
  done
}

java_major() {
  java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}

ensure_java() {
  local major=""
  command -v java >/dev/null 2>&1 && major="$(java_major)"
  if [ -n "$major" ] && [ "$major" -ge 17 ]; then
    return 0
  fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    log "Java 17+ not found (Spark needs it); installing openjdk-17-jre-headless with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
    return 0
  fi
  log "Spark needs Java 17 or newer (found: ${major:-none})."
  log "Install it, e.g.: sudo apt-get install openjdk-17-jre-headless   (Debian/Ubuntu)"
  log "              or: brew install openjdk@17                         (macOS)"
  return 1
}

ensure_venv
ensure_java
export PYSPARK_PYTHON="$VENV/bin/python"
export PYSPARK_DRIVER_PYTHON="$VENV/bin/python"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export PATH="$VENV/bin:$PATH"
