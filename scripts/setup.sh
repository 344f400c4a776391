#!/usr/bin/env bash
# Creates .venv and installs the project with everything the demo and the tests need.
# CPU machines get the local torch==2.13.0 wheel first, so no CUDA wheels are pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
      .venv/bin/python -m pip install --quiet torch
    else
      .venv/bin/python -m pip install --quiet torch==2.13.0
    fi
  fi
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  touch "$stamp"
fi
