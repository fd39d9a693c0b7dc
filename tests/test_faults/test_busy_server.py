"""A backup on a busy production server: it runs with the settings its own sessions need, it
never queues behind a migration's lock, and it holds no snapshot while it waits for its own."""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import psycopg
import pytest

from pgvault_assets.engine.backup.backup import backup_database
from pgvault_assets.engine.basics.names import retention_lock_name
from pgvault_assets.errors import BackupFailed
from pgvault_assets.settings import DatabaseUrl
from tests.conftest import MAINTENANCE_URL
from tests.test_engine.helpers import DAY, NOW, back_up, vault
from tests.test_faults.conftest import fill, wait_for


def _dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def test_a_database_whose_statements_time_out_after_a_millisecond_is_still_backed_up(
    local_env, make_database
):
    url = make_database("timeout")
    fill(url, 300_000)  # counting these rows takes far longer than a millisecond
    with psycopg.connect(MAINTENANCE_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{_dbname(url)}" SET statement_timeout = 1')
        admin.execute(
            f'ALTER DATABASE "{_dbname(url)}" SET idle_in_transaction_session_timeout = 1'
        )

    manifest = back_up(url)

    assert manifest.table_rows == {"public.t": 300_000}


def test_a_table_locked_by_a_migration_fails_the_attempt_naming_the_table_and_its_holder(
    local_env, make_database
):
    url = make_database("locked")
    fill(url, 10)
    migration = psycopg.connect(url)
    migration.execute("LOCK TABLE public.t IN ACCESS EXCLUSIVE MODE")
    holder = migration.info.backend_pid
    try:
        with pytest.raises(BackupFailed) as failed:
            backup_database(
                vault(),
                DatabaseUrl(url),
                DAY,
                now=lambda: NOW,
                lock_wait_seconds=1,
                enforce_date=False,
            )
    finally:
        migration.close()
    message = str(failed.value)
    assert "\n" not in message
    assert "pg_dump waited 1 s for a lock on public.t and gave up" in message
    assert f"PID {holder}" in message and "AccessExclusiveLock" in message
    assert vault().list_manifests() == []


def test_the_dump_snapshot_is_released_before_the_backup_waits_for_retention(
    local_env, make_database
):
    url = make_database("snapshot")
    fill(url, 300_000)  # a dump long enough to be seen running
    dbname = _dbname(url)
    done: list[object] = []

    def snapshots_held() -> int:
        with psycopg.connect(MAINTENANCE_URL, autocommit=True) as admin:
            return admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND (backend_xmin IS NOT NULL OR state LIKE 'idle in transaction%%')",
                (dbname,),
            ).fetchone()[0]

    with vault().store.lock(retention_lock_name("test")):  # a cleanup is running
        backup = threading.Thread(target=lambda: done.append(back_up(url)))
        backup.start()
        wait_for(lambda: _dumping(dbname), "pg_dump to start")
        wait_for(
            lambda: not _dumping(dbname) and snapshots_held() == 0,
            "the dump's snapshot to be released while the backup waits",
            timeout=30,
        )
        assert backup.is_alive() and done == []  # still waiting for the retention lock
    backup.join(60)
    assert done and vault().list_manifests()[0].table_rows == {"public.t": 300_000}


def _dumping(dbname: str) -> bool:
    with psycopg.connect(MAINTENANCE_URL, autocommit=True) as admin:
        return admin.execute(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = %s "
            "AND application_name = 'pg_dump'",
            (dbname,),
        ).fetchone()[0]
