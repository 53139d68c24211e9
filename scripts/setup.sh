#!/usr/bin/env bash
# Create .venv (if needed) and install dsm into it.  Usage: scripts/setup.sh [--dev]
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
if [ ! -x .venv/bin/python ]; then
  "$PY" -c 'import sys; assert sys.version_info >= (3, 11), "dsm needs Python >= 3.11"'
  "$PY" -m venv .venv
fi
# torch first and pinned, so that nothing later resolves it to a CUDA build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".${extra}"
echo "dsm installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
