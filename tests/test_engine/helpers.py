"""Small helpers the engine tests share: a fixed clock and one-call backups and restores."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta

import psycopg

from pgvault_assets.engine.backup.backup import backup_database
from pgvault_assets.engine.basics.clock import latest_complete_day
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.settings import DatabaseUrl, load_settings

# One clock per run: the first process of a run to import this (pytest, through conftest) pins
# its instant in the environment, and every process it starts means that instant too, so a
# child started after midnight UTC backs up and restores the parent's day, not its own.
TEST_NOW_VARIABLE = "PGVAULT_TEST_NOW"
NOW = datetime.fromisoformat(
    os.environ.setdefault(TEST_NOW_VARIABLE, datetime.now(UTC).isoformat())
)
DAY: date = latest_complete_day(NOW)
LAST_MONTH: date = (NOW.date().replace(day=1) - timedelta(days=1)).replace(day=1)
"""The first of the month before NOW's: what a drill run at NOW restores."""


def vault() -> Vault:
    return Vault.from_settings(load_settings())


def back_up(
    url: str, *, day: date = DAY, now: datetime = NOW, accept_new_source: bool = False
) -> Manifest:
    """Back up `url` as the backup of `day`, with the clock set so that `day` is yesterday;
    `accept_new_source` for a test that backs up another database into the same environment."""
    clock = datetime.combine(day + timedelta(days=1), now.timetz())
    return backup_database(
        vault(),
        DatabaseUrl.parse(url, "DATABASE_URL"),
        day,
        now=lambda: clock,
        accept_new_source=accept_new_source,
    )


def marked(url: str) -> str:
    """`url` with a marker table, to prove afterwards that a refused restore left it alone."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE still_here (id int); INSERT INTO still_here VALUES (42)")
    return url


def marker_intact(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id FROM still_here").fetchone() == (42,)
