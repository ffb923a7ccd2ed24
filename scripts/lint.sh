#!/usr/bin/env bash
# Set up (idempotent), then lint, check formatting, check the import contracts and type-check.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=test,lint bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
.venv/bin/mypy
