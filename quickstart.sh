#!/usr/bin/env bash
# The first command a newcomer runs: set everything up, back up a real database on the
# embedded default (local store, key file and Dagster instance in pgvault's home,
# ~/.local/share/pgvault unless PGVAULT_HOME says otherwise), and open Dagster's UI on it.
#   bash quickstart.sh            set up, back up, start the UI on http://127.0.0.1:3000
#   bash quickstart.sh --no-ui    set up and back up only
set -euo pipefail
cd "$(dirname "$0")"

bash scripts/setup.sh

# The same fixed place every later pgvault command uses, from whatever directory it runs.
home="$(.venv/bin/python -c 'from pgvault_assets.settings import pgvault_home; print(pgvault_home())')"
export DAGSTER_HOME="${DAGSTER_HOME:-$home/dagster_home}"
mkdir -p "$DAGSTER_HOME"
touch "$DAGSTER_HOME/dagster.yaml"
if [ -z "${DATABASE_URL:-}" ]; then
  .venv/bin/pgvault demo-database
  export DATABASE_URL=postgresql://postgres@127.0.0.1:5432/pgvault_demo
  export STAGING_DATABASE_URL="${STAGING_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/pgvault_demo_staging}"
fi

.venv/bin/pgvault backup --prove-restorable
.venv/bin/pgvault list-backups

if [ "${1:-}" != "--no-ui" ]; then
  echo "Dagster UI: http://127.0.0.1:3000 (the backup above is under Assets → backup)"
  exec .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000
fi
