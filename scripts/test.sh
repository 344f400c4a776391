#!/usr/bin/env bash
# Lint, type-check and run the test suite (what CI runs). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
.venv/bin/hadolint Dockerfile
.venv/bin/yamllint -s deploy .yamllint.yaml
find deploy/k8s -name '*.yaml' ! -name kustomization.yaml -print0 \
  | xargs -0 .venv/bin/kubernetes-validate --strict --quiet
# The load-balancer test drives a real nginx; install it where we can (CI runs as root).
if ! command -v nginx >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -q nginx >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null && apt-get install -y -q nginx >/dev/null)) \
    || echo "nginx could not be installed: the load-balancer test will be skipped"
fi
# The page test drives Debian's Chromium with Playwright (its own browser download cannot
# work offline); install the browser where we can.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null)) \
    || echo "chromium could not be installed: the browser test will be skipped"
fi
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests"
  exit 0
fi
exit "$status"
