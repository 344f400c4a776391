#!/usr/bin/env bash
# Builds .venv-peers: the peer attribution libraries the quality benchmark compares against
# (kronfluence, dattri-llm, logix), in their own environment, never in the project's.
# kronfluence and dattri-llm install without their dependencies (kronfluence's torchvision
# pin would replace the CPU torch); logix is published for Python < 3.11 but runs on 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv-peers/bin/python ]; then
  "$PYTHON" -m venv .venv-peers
fi
.venv-peers/bin/python -m pip install --quiet --upgrade pip
.venv-peers/bin/python -m pip install --quiet torch==2.13.0 transformers accelerate einops \
  safetensors tqdm pyyaml scipy opt-einsum einconv
.venv-peers/bin/python -m pip install --quiet --no-deps dattri-llm==0.1.0 kronfluence==1.0.1
wheels=$(mktemp -d)
.venv-peers/bin/python -m pip download --quiet --no-deps --python-version 3.10 \
  --only-binary=:all: logix-ai==0.1.1 -d "$wheels"
.venv-peers/bin/python -m pip install --quiet --no-deps --ignore-requires-python \
  "$wheels"/logix_ai-0.1.1-py3-none-any.whl
.venv-peers/bin/python -c "import kronfluence, dattri_llm, logix; print('peers ready')"
