#!/usr/bin/env bash
# Run the tests as if today were each of the given dates (default: the calendar's awkward days).
#   bash scripts/test-dates.sh                      the default dates, every test
#   bash scripts/test-dates.sh 2027-01-01 -- -k retention   one date, a subset
# Every Python process the tests start (pytest, pgvault, Dagster) reads the shifted clock:
# see tests/clock/sitecustomize.py.
set -euo pipefail
cd "$(dirname "$0")/.."

dates=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do dates+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
if [ ${#dates[@]} -eq 0 ]; then
  # A Monday (yesterday is a Sunday, weekly), a Tuesday (yesterday is a Monday), the 2nd of a
  # month (yesterday is the 1st, monthly), New Year's Day (yesterday is in another year) and
  # 1 March of a leap year (yesterday is 29 February).
  dates=(2026-11-30 2026-12-01 2026-12-02 2027-01-01 2028-03-01)
fi

status=0
for day in "${dates[@]}"; do
  echo "=== as if today were $day ($(date -d "$day" +%A))"
  PGVAULT_TEST_TODAY="$day" PYTHONPATH="$PWD/tests/clock${PYTHONPATH:+:$PYTHONPATH}" \
    .venv/bin/python -m pytest -q -m "not external_clock" "$@" || status=1
done
exit $status
