#!/usr/bin/env bash
# Set up (idempotent) and run the main job: 5 lenders of the synthetic market, DP epsilon 3 each.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FLWR_HOME="$PWD/.flwr" FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 OMP_NUM_THREADS=1
.venv/bin/fedcredit run "$@"   # engine inprocess unless --engine simulation
