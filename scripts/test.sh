#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Headless Chromium for the report's browser test (Debian packages). Where it cannot be installed
# (not root, no apt-get, no network to the mirror) that one test skips and says why.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } \
            || echo "could not install chromium: the browser test will be skipped" >&2
    fi
fi
export FLWR_HOME="$PWD/.flwr" FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 OMP_NUM_THREADS=1
# Two workers (one per core), a test file per worker: the deployment tests wait on Flower's processes
# more than they compute, so the rest of the suite runs beside them. Each worker trains with one thread.
.venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
