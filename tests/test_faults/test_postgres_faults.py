"""PostgreSQL restarted, or a backend terminated, in the middle of a dump or a restore.

The restarts happen on a private cluster of the test's own (the shared test server is never
restarted, and the databases a test leaves there go with it). To hit
the middle for sure, the pipeline is held at a gate once a first megabyte has passed: pg_dump
or psql is then connected and mid-COPY when the fault strikes, and the gate opens after it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg

from pgvault_assets.engine.backup.backup import backup_database
from pgvault_assets.engine.restore.restore import restore_backup
from pgvault_assets.engine.restore.verify import verify_backup
from pgvault_assets.errors import BackupFailed, PgvaultError, RestoreFailed
from pgvault_assets.settings import DatabaseUrl
from tests.conftest import MAINTENANCE_URL, PrivateCluster
from tests.test_engine.helpers import DAY, NOW, back_up, marked, marker_intact, vault
from tests.test_faults.conftest import fill, wait_for

ROWS = 150_000
MIB = 1024 * 1024
CLOCK = datetime.combine(DAY + timedelta(days=1), NOW.timetz())


@dataclass
class Gate:
    """A progress callback that stops the pipeline once `after_bytes` passed, until opened."""

    after_bytes: int = MIB
    seen: int = 0
    reached: threading.Event = field(default_factory=threading.Event)
    opened: threading.Event = field(default_factory=threading.Event)

    def __call__(self, size: int) -> None:
        self.seen += size
        if self.seen >= self.after_bytes and not self.opened.is_set():
            self.reached.set()
            self.opened.wait(60)


def _in_background(action: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, failures


def _strike(gate: Gate, fault: Callable[[], None], thread: threading.Thread) -> None:
    assert gate.reached.wait(60), "the pipeline never reached the gate"
    try:
        fault()
    finally:
        gate.opened.set()
        thread.join(120)


def _databases_like(server: str, prefix: str) -> list[str]:
    with psycopg.connect(f"{server}/postgres") as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)
        ).fetchall()
    return sorted(r[0] for r in rows)


def test_postgres_restarted_during_a_dump_fails_cleanly_and_the_retry_succeeds(
    local_env, own_cluster: PrivateCluster
) -> None:
    url = own_cluster.create_database("dump_restart")
    fill(url, ROWS)
    gate = Gate()
    thread, failures = _in_background(
        lambda: backup_database(vault(), DatabaseUrl(url), DAY, now=lambda: CLOCK, progress=gate)
    )
    _strike(gate, own_cluster.restart, thread)

    assert len(failures) == 1 and isinstance(failures[0], BackupFailed), failures
    assert "no backup was recorded" in str(failures[0])
    assert vault().list_manifests() == []
    manifest = back_up(url)
    assert manifest.table_rows == {"public.t": ROWS}
    assert verify_backup(vault(), DAY, full=True).sha256 == manifest.sha256
    assert not list((local_env / "store").rglob(".*partial*"))


def test_postgres_restarted_during_a_restore_keeps_the_target_and_the_retry_succeeds(
    local_env, own_cluster: PrivateCluster
) -> None:
    source = own_cluster.create_database("restore_src")
    fill(source, ROWS)
    back_up(source)
    target = marked(own_cluster.create_database("restore_target"))
    gate = Gate()
    thread, failures = _in_background(
        lambda: restore_backup(vault(), DAY, DatabaseUrl(target), progress=gate)
    )
    _strike(gate, own_cluster.restart, thread)

    assert len(failures) == 1 and isinstance(failures[0], RestoreFailed), failures
    assert marker_intact(target)
    result = restore_backup(vault(), DAY, DatabaseUrl(target))
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (ROWS,)
    assert _databases_like(own_cluster.server_url, "restore_target_restore_") == []
    assert result.previous is not None  # the marked database, kept for rollback


def test_backend_terminated_during_a_restore_keeps_the_target_and_drops_the_scratch(
    local_env, make_database
) -> None:
    source = make_database("src")
    fill(source, ROWS)
    back_up(source)
    target = marked(make_database("staging"))
    scratch_prefix = DatabaseUrl(target).dbname + "_restore_"
    gate = Gate()
    thread, failures = _in_background(
        lambda: restore_backup(vault(), DAY, DatabaseUrl(target), progress=gate)
    )

    def terminate_psql() -> None:
        with psycopg.connect(MAINTENANCE_URL, autocommit=True) as conn:
            wait_for(
                lambda: conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE starts_with(datname, %s) AND pid <> pg_backend_pid()",
                    (scratch_prefix,),
                ).fetchall(),
                "psql's session in the scratch database",
            )

    _strike(gate, terminate_psql, thread)

    assert len(failures) == 1 and isinstance(failures[0], PgvaultError), failures
    assert marker_intact(target)
    server = DatabaseUrl(target).with_dbname("x").secret.rsplit("/", 1)[0]
    assert _databases_like(server, scratch_prefix) == []
    restore_backup(vault(), DAY, DatabaseUrl(target))
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (ROWS,)
