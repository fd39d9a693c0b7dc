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
# The project's instance settings (pools, run monitoring, no telemetry, no welcome modal) on
# the embedded SQLite storage; an instance file the operator wrote is left alone.
.venv/bin/python scripts/quickstart_instance.py dagster.yaml "$DAGSTER_HOME/dagster.yaml"

shell_lines="  export DAGSTER_HOME=$DAGSTER_HOME
  export PATH=\"$PWD/.venv/bin:\$PATH\""
if [ -z "${DATABASE_URL:-}" ]; then
  .venv/bin/pgvault demo-database
  export DATABASE_URL=postgresql://postgres@127.0.0.1:5432/pgvault_demo
  export STAGING_DATABASE_URL="${STAGING_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/pgvault_demo_staging}"
  # Only the demo's URLs are printed: a URL the operator set may hold a password.
  shell_lines="  export DATABASE_URL=$DATABASE_URL
  export STAGING_DATABASE_URL=$STAGING_DATABASE_URL
$shell_lines"
fi

.venv/bin/pgvault backup --prove-restorable
.venv/bin/pgvault list-backups
printf '\nTo use pgvault and this Dagster instance from a new shell, set these first:\n%s\n' "$shell_lines"

if [ "${1:-}" != "--no-ui" ]; then
  echo "Dagster UI: http://127.0.0.1:3000 (the backup above is under Assets → database_backup)"
  # What `dagster dev` starts, without its notice to use another command: the daemon
  # (schedules, sensors, queued runs) beside the webserver, stopped together.
  .venv/bin/dagster-daemon run -w workspace.yaml &
  daemon=$!
  trap 'kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true' EXIT
  .venv/bin/dagster-webserver -w workspace.yaml -h 127.0.0.1 -p 3000
fi
