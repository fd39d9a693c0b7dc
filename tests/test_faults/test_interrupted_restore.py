"""A restore interrupted (Ctrl-C) while its sessions load tables side by side stops every
session, drops its scratch database and leaves the target as it was."""

from __future__ import annotations

import signal
from pathlib import Path

import psycopg
import pytest

from pgvault_assets.settings import DatabaseUrl
from tests.conftest import MAINTENANCE_URL
from tests.test_engine.helpers import back_up, marked, marker_intact
from tests.test_faults.conftest import fill, wait_for

RESTORE = (
    "import sys; from pgvault_assets.engine.restore.restore import restore_backup; "
    "from pgvault_assets.settings import DatabaseUrl; from tests.test_engine.helpers import DAY, vault; "
    "restore_backup(vault(), DAY, DatabaseUrl(sys.argv[1]))"
)


def _copies_running(target: str) -> int:
    """Sessions copying rows into the target's scratch database now."""
    with psycopg.connect(MAINTENANCE_URL) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE starts_with(datname, %s) "
            "AND starts_with(query, 'COPY')",
            (DatabaseUrl(target).dbname + "_restore_",),
        ).fetchone()
    return int(row[0]) if row else 0


def _scratches(target: str) -> list[str]:
    with psycopg.connect(MAINTENANCE_URL) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
            (DatabaseUrl(target).dbname + "_restore_",),
        ).fetchall()
    return [row[0] for row in rows]


def _psql_children(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text.split("(", 1)[1].rsplit(")", 1)
        if name == "psql" and int(rest.split()[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def test_an_interrupted_parallel_restore_stops_every_session_and_drops_the_scratch(
    local_env, make_database, spawn_pgvault, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_database("src")
    fill(source, 600_000)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE TABLE u AS SELECT * FROM t")
    back_up(source)
    target = marked(make_database("staging"))
    monkeypatch.setenv("RESTORE_PARALLEL_LOADERS", "2")

    child = spawn_pgvault(RESTORE, target)
    wait_for(lambda: _copies_running(target) >= 1, "a session copying rows")
    sessions = _psql_children(child.proc.pid)
    assert len(sessions) == 2
    child.proc.send_signal(signal.SIGINT)
    child.proc.wait(60)

    assert child.proc.returncode != 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in sessions)
    assert _scratches(target) == []
    assert marker_intact(target)
