#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: set up (idempotent), the static checks
# (lint, format, the import graph's layers and cycles), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/lint-imports --no-logo --no-cache
exec .venv/bin/python -m pytest "$@"
