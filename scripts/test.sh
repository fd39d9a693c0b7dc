#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: set up (idempotent), the static checks
# (lint, format, the import graph's layers and cycles, types), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/lint-imports --no-logo --no-cache
.venv/bin/mypy
# Random order (pytest-randomly; its seed is printed: `-p randomly -p "randomly_seed=N"` repeats
# one) and two workers, one per core (pytest-xdist; `-n 0` runs in this process, for -x or pdb).
exec .venv/bin/python -m pytest -n 2 "$@"
