#!/usr/bin/env bash
# The main job on the embedded default: BBC News corpus → small Llama → LoRIF index.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m examples.bbc "$@"
