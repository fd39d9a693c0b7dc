#!/usr/bin/env bash
# Install pgvault and its test tools into .venv and make sure PostgreSQL is running.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-postgres.sh
if ! command -v ssh-keygen >/dev/null; then
  apt-get update -qq && apt-get install -y -qq openssh-client >/dev/null
fi
# Point-in-time recovery orchestrates pgBackRest (Debian's package) for WAL archiving.
if ! command -v pgbackrest >/dev/null; then
  apt-get update -qq && apt-get install -y -qq pgbackrest >/dev/null
fi
# promtool checks and tests the shipped alert rules; the suite scrapes with a real prometheus.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  apt-get update -qq && apt-get install -y -qq prometheus >/dev/null
fi
# amtool checks the shipped Alertmanager routing (deploy/prometheus/alertmanager.yml).
if ! command -v amtool >/dev/null; then
  apt-get update -qq && apt-get install -y -qq prometheus-alertmanager >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python -m pip check
