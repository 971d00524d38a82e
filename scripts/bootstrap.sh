#!/usr/bin/env bash
# Create or reuse the virtualenv at .venv, install the pinned stack into it, and make sure Java 17+ is present.
# Sourced by run.sh and test.sh; safe to run again (it reinstalls only when a requirements file changes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

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

ensure_venv() {
  local stamp="$VENV/.stack-stamp" want
  want="$(cat "$ROOT/requirements/stack.txt" "$ROOT/requirements/no-deps.txt" "$ROOT/setup.cfg" | sha256sum | cut -c1-16)"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    local py; py="$(find_python)"
    log "creating $VENV with $py"
    "$py" -m venv "$VENV"
  fi
  log "installing the pinned stack into $VENV (a few minutes the first time)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements/stack.txt"
  # petastorm pins setuptools<70 while torch 2.13 needs >=77, and recsim drags in what it never imports:
  # these go in without their declared dependencies (see requirements/no-deps.txt).
  "$VENV/bin/python" -m pip install -q --no-deps -r "$ROOT/requirements/no-deps.txt"
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"
  echo "$want" > "$stamp"
  log "environment ready"
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
