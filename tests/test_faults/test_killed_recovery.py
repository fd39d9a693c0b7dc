"""Row recovery and drills killed with SIGKILL: the next run drops the scratch database left.

Both restore a backup into a throwaway `pgvault_scratch_*` database and drop it when done; a
killed process drops nothing. The next run on that server drops what dead runs left, says
so, and leaves alone both a live run's scratch database and any database not named as one.
Since that sweep is server-wide, each test runs on a private cluster of its own: another
suite's runs on the machine can neither take its scratch databases nor leave theirs in view.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from pgvault_assets.engine.recovery.drill import run_drill
from pgvault_assets.engine.recovery.rows import recover_rows
from pgvault_assets.settings import DatabaseUrl
from tests.conftest import MAINTENANCE_URL, PrivateCluster
from tests.test_engine.helpers import DAY, LAST_MONTH, NOW, back_up, vault
from tests.test_faults.conftest import Pgvault, wait_for

RECOVER = (
    "import sys; from pgvault_assets.engine.recovery.rows import recover_rows; "
    "from pgvault_assets.settings import DatabaseUrl; from tests.test_engine.helpers import DAY, vault; "
    "recover_rows(vault(), DAY, DatabaseUrl(sys.argv[1]), 'public.t')"
)
DRILL = (
    "import sys; from pgvault_assets.engine.recovery.drill import run_drill; "
    "from pgvault_assets.settings import DatabaseUrl; from tests.test_engine.helpers import NOW, vault; "
    "run_drill(vault(), DatabaseUrl(sys.argv[1]), now=lambda: NOW)"
)


@pytest.fixture
def source(local_env, own_cluster: PrivateCluster) -> DatabaseUrl:
    """A small table with a primary key on the test's own cluster, backed up as yesterday and
    as last month's 1st."""
    url = own_cluster.create_database("killrows")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t (id int PRIMARY KEY, s text); "
            "INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 1000) i"
        )
    back_up(url)
    back_up(url, day=LAST_MONTH)
    return DatabaseUrl(url)


def scratch_databases(server: DatabaseUrl) -> set[str]:
    with psycopg.connect(server.with_dbname("postgres").secret) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, 'pgvault_scratch_')"
        ).fetchall()
    return {row[0] for row in rows}


def sessions_of(server: DatabaseUrl, application: str) -> int:
    with psycopg.connect(server.with_dbname("postgres").secret) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (application,)
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def pgvault_run(
    spawn_pgvault, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., tuple[Pgvault, str, str]]]:
    """Spawn pgvault paused at a point; returns it, its application name and its scratch.

    Its sessions carry an application name of their own, so a test can wait until the server
    has noticed a kill; a scratch database left behind goes with the test's cluster.
    """

    def start(code: str, url: DatabaseUrl, pause_at: str) -> tuple[Pgvault, str, str]:
        application = f"pgvault-killed-{uuid.uuid4().hex[:8]}"
        monkeypatch.setenv("PGAPPNAME", application)
        before = scratch_databases(url)
        child = spawn_pgvault(code, url.secret, pause_at=pause_at)
        monkeypatch.delenv("PGAPPNAME")
        child.wait_for_pause(pause_at)
        [created] = scratch_databases(url) - before
        return child, application, created

    yield start


def kill(child: Pgvault, server: DatabaseUrl, application: str) -> None:
    child.kill()
    wait_for(
        lambda: sessions_of(server, application) == 0,
        "the server to end the killed run's sessions",
    )


@pytest.mark.parametrize("stage", ["swap", "scratch"])
def test_recover_rows_killed_leaves_a_scratch_database_the_next_run_drops_and_reports(
    source, pgvault_run, caplog, stage: str
) -> None:
    child, application, name = pgvault_run(RECOVER, source, stage)
    kill(child, source, application)
    assert name.startswith("pgvault_scratch_rows_")
    assert name in scratch_databases(source)
    if stage == "swap":  # killed inside its restore, before the rename to its final name
        assert "_restore_" in name

    with caplog.at_level(logging.WARNING, logger="pgvault_assets"):
        result = recover_rows(vault(), DAY, source, "public.t")

    assert name in result.abandoned_scratch
    assert f"dropped {name}, the scratch database of an interrupted run" in caplog.text
    assert name not in scratch_databases(source)


def test_a_killed_drill_is_cleaned_by_the_next_drill_and_named_in_its_report(
    source, pgvault_run, caplog
) -> None:
    child, application, name = pgvault_run(DRILL, source, "scratch")
    kill(child, source, application)
    assert name.startswith("pgvault_scratch_drill_") and name in scratch_databases(source)

    with caplog.at_level(logging.WARNING, logger="pgvault_assets"):
        report = run_drill(vault(), source, now=lambda: NOW)

    assert report.passed, report.findings()
    assert name in report.abandoned_scratch
    assert any(name in finding and "interrupted run" in finding for finding in report.findings())
    assert name in report.to_markdown()
    assert name not in scratch_databases(source)


def test_cli_recover_rows_says_it_dropped_a_killed_runs_scratch(
    source, pgvault_run, monkeypatch, capsys
) -> None:
    from pgvault_assets.cli import main

    child, application, name = pgvault_run(RECOVER, source, "scratch")
    kill(child, source, application)
    monkeypatch.setenv("DATABASE_URL", str(source.secret))
    monkeypatch.delenv("STAGING_DATABASE_URL", raising=False)

    code = main(
        ["recover-rows", "--date", str(DAY), "--table", "public.t", "--target", "production"]
    )

    out = capsys.readouterr().out
    assert code == 0
    assert f"-- dropped {name}, the scratch database an interrupted run left" in out


def test_a_live_runs_scratch_database_and_look_alikes_are_never_dropped(
    source, pgvault_run
) -> None:
    child, application, live = pgvault_run(RECOVER, source, "scratch")
    token = uuid.uuid4().hex[:8]
    look_alikes = [
        f"pgvault_rows_{LAST_MONTH:%Y%m%d}_{token}",  # an older pgvault's name: no lock is held
        f"pgvault_scratch_rows_{LAST_MONTH:%Y%m%d}_{token}_copy",
        f"pgvault_scratch_reports_{LAST_MONTH:%Y%m%d}_{token}",
    ]
    with psycopg.connect(source.with_dbname("postgres").secret, autocommit=True) as conn:
        for name in look_alikes:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    result = recover_rows(vault(), DAY, source, "public.t")
    report = run_drill(vault(), source, now=lambda: NOW)

    assert live not in result.abandoned_scratch + report.abandoned_scratch
    assert live in scratch_databases(source)
    assert sorted(_databases(source, look_alikes)) == sorted(look_alikes)
    with psycopg.connect(source.with_dbname(live).secret) as conn:  # still whole, in use
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1000,)

    kill(child, source, application)
    assert live in recover_rows(vault(), DAY, source, "public.t").abandoned_scratch


def _databases(server: DatabaseUrl, names: list[str]) -> list[str]:
    with psycopg.connect(server.with_dbname("postgres").secret) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (names,)
        ).fetchall()
    return [row[0] for row in rows]


def test_a_scratch_whose_guarding_session_ended_is_refused_and_still_dropped(
    source, monkeypatch
) -> None:
    """The scratch's lock lives as long as its holder's session: if the server ends that
    session mid-restore, another run could take the scratch for abandoned, so the run stops."""
    from pgvault_assets.engine.restore.restore import restore_into_scratch
    from pgvault_assets.errors import RestoreFailed

    application = f"pgvault-guarded-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PGAPPNAME", application)  # this test's sessions alone carry it
    terminated: list[int] = []

    def end_the_guarding_session(_: int) -> None:
        if terminated:
            return
        with psycopg.connect(source.with_dbname("postgres").secret, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid), pid FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid() "
                "AND query LIKE 'SELECT pg_advisory_lock(hashtext(%%'",
                (application,),
            ).fetchall()
        terminated.extend(pid for ok, pid in rows if ok)

    before = scratch_databases(source)
    with (
        pytest.raises(RestoreFailed, match=r"the session guarding the scratch database .* ended"),
        restore_into_scratch(
            vault(),
            DAY,
            source.with_dbname("postgres"),
            label="rows",
            progress=end_the_guarding_session,
        ),
    ):
        pytest.fail("the scratch must not be handed out")
    assert len(terminated) == 1
    assert scratch_databases(source) == before


def test_a_leftover_scratch_pgvault_may_not_drop_is_reported_and_does_not_block(
    local_env, caplog
) -> None:
    """Another role's leftover: the run says so and goes on instead of failing every restore."""
    from pgvault_assets.engine.restore.scratch import drop_abandoned_scratch

    role = f"pgvault_test_role_{uuid.uuid4().hex[:8]}"
    name = f"pgvault_scratch_drill_20250101_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(MAINTENANCE_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(role)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            limited = MAINTENANCE_URL.replace("postgres@", f"{role}@", 1)
            with (
                caplog.at_level(logging.WARNING),
                psycopg.connect(limited, autocommit=True) as conn,
            ):
                assert drop_abandoned_scratch(conn) == ()
            assert name in scratch_databases(DatabaseUrl(MAINTENANCE_URL))
            assert f"could not drop {name}" in caplog.text and "drop it as its owner" in caplog.text
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
