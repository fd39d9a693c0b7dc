#!/usr/bin/env bash
# Screenshots of what a newcomer sees after `bash quickstart.sh`: the asset graph, the backup's
# partitions, Automation and the Overview timeline, taken by headless Chromium (Debian's `chromium`) from a webserver
# on the quickstart's instance. Run the quickstart first (`bash quickstart.sh --no-ui`).
#   bash scripts/screenshots.sh [OUT_DIR]     default docs/screenshots
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/screenshots}"
mkdir -p "$out"
if ! command -v chromium >/dev/null; then
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
home="$(.venv/bin/python -c 'from pgvault_assets.settings import pgvault_home; print(pgvault_home())')"
export DAGSTER_HOME="${DAGSTER_HOME:-$home/dagster_home}"
[ -f "$DAGSTER_HOME/dagster.yaml" ] || { echo "error: no instance in $DAGSTER_HOME; run bash quickstart.sh --no-ui first" >&2; exit 2; }
port="$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
.venv/bin/dagster-webserver -w workspace.yaml -h 127.0.0.1 -p "$port" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do
  curl -sf "http://127.0.0.1:$port/server_info" >/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "error: dagster-webserver exited" >&2; exit 1; }
  sleep 0.5
done
shot() {  # name path: the page after its scripts have had 15 s of virtual time to render
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1440,900 \
    --virtual-time-budget=15000 --screenshot="$out/$1.png" "http://127.0.0.1:$port$2" 2>/dev/null
  echo "$out/$1.png"
}
shot asset-graph "/locations/pgvault/asset-groups/backups"
shot partitions "/assets/database_backup?view=partitions"
shot automation "/automation"
shot timeline "/overview/activity/timeline"
