"""Staging is never production: a staging URL that reaches a production database under any
spelling is refused before anything is written; another database or server is staging."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgvault_assets.cli import main
from pgvault_assets.engine.basics.names import database_beside
from pgvault_assets.engine.postgres.cluster import Cluster, restored_cluster
from tests.conftest import PG_PORT, PG_SERVER_URL, PG_USER, PrivateCluster, admin_connect
from tests.test_engine.helpers import DAY, back_up, marked, marker_intact
from tests.test_faults.conftest import wait_for
from tests.test_fleet.helpers import alpha_and_beta, write_fleet

PGVAULT = Path(sys.executable).with_name("pgvault")
# The test server (127.0.0.1) by other names: `localhost`, and a name libpq never resolves
# because `hostaddr` says where to connect (what a DNS alias amounts to).
SPELLINGS = {
    "localhost": f"postgresql://{PG_USER}@localhost:{PG_PORT}/{{}}",
    "alias": f"postgresql://{PG_USER}@db-alias.invalid:{PG_PORT}/{{}}?hostaddr=127.0.0.1",
}


def pgvault(*argv: str) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it, in this test's environment."""
    return subprocess.run(
        [PGVAULT, *argv],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
        check=False,
    )


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


def keep_for_rollback(url: str) -> str:
    """An empty database beside `url`'s, named as a restore keeps the one it replaced: what a
    rollback of that target would swap in."""
    name = database_beside(dbname(url), "pre_restore", "20260101000000")
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def databases_beside(url: str) -> list[str]:
    with admin_connect() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname ^@ %s AND datname <> %s",
            (dbname(url) + "_", dbname(url)),
        ).fetchall()
    return sorted(row[0] for row in rows)


def owners(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM owner ORDER BY name")]


def test_a_fleet_whose_staging_names_the_production_server_is_refused_production_untouched(
    local_env, make_database, monkeypatch
):
    urls, _ = alpha_and_beta(
        local_env, monkeypatch, make_database, staging=SPELLINGS["localhost"].format("postgres")
    )
    alpha = urls["alpha"]
    assert main(["backup", "--database", "alpha"]) == 0
    with psycopg.connect(alpha, autocommit=True) as conn:
        conn.execute("INSERT INTO owner VALUES ('written after the backup')")
    refusal = (
        "server main: its staging_url_env PGVAULT_TEST_MAIN_URL_STAGING and production "
        "database alpha (url_env PGVAULT_TEST_MAIN_URL) reach the same database"
    )

    restore = pgvault(
        "restore-from-backup",
        "--database",
        "alpha",
        "--date",
        DAY.isoformat(),
        "--target",
        "staging",
    )
    assert restore.returncode == 2
    assert refusal in one_line(restore.stderr)
    assert "point PGVAULT_TEST_MAIN_URL_STAGING at another server" in restore.stderr
    assert owners(alpha) == ["alpha", "written after the backup"]
    assert databases_beside(alpha) == []

    kept = keep_for_rollback(alpha)
    rollback = pgvault("rollback-restore", "--database", "alpha", "--target", "staging")
    assert rollback.returncode == 2
    assert refusal in one_line(rollback.stderr)
    assert owners(alpha) == ["alpha", "written after the backup"]
    assert databases_beside(alpha) == [kept]


def test_a_fleet_staging_that_is_another_servers_production_database_is_refused(
    local_env, make_database, private_postgres, monkeypatch, capsys
):
    """Every fleet database is production, not only the one restored: main's staging server
    holds gamma, under alpha's dbname."""
    alpha = make_database("alpha")
    name = dbname(alpha)
    gamma = private_postgres.create_database(name)
    try:
        with psycopg.connect(gamma, autocommit=True) as conn:
            conn.execute("CREATE TABLE owner (name text); INSERT INTO owner VALUES ('gamma')")
        kept = private_postgres.create_database(
            database_beside(name, "pre_restore", "20260101000000")
        )
        write_fleet(
            local_env,
            monkeypatch,
            servers={
                "main": (f"{PG_SERVER_URL}/postgres", 1),
                "other": (private_postgres.url("postgres"), 1),
            },
            databases={"alpha": ("main", name), "gamma": ("other", name)},
            staging={"main": private_postgres.url("postgres")},
        )

        assert main([*COMMANDS["rollback"], "--database", "alpha"]) == 2

        line = one_line(capsys.readouterr().err)
        assert (
            "server main: its staging_url_env PGVAULT_TEST_MAIN_URL_STAGING and production "
            "database gamma (url_env PGVAULT_TEST_OTHER_URL) reach the same database"
        ) in line
        assert owners(gamma) == ["gamma"]
        with psycopg.connect(kept):
            pass
    finally:
        with psycopg.connect(private_postgres.url("postgres"), autocommit=True) as conn:
            for (found,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname ^@ %s", (name,)
            ).fetchall():
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(found)))


COMMANDS = {
    "restore": ["restore-from-backup", "--date", DAY.isoformat(), "--target", "staging"],
    "rollback": ["rollback-restore", "--target", "staging"],
    "row recovery": [
        "recover-rows",
        "--date",
        DAY.isoformat(),
        "--table",
        "public.still_here",
        "--target",
        "staging",
        "--apply",
    ],
    "integrity check": ["check-database-integrity", "--target", "staging"],
    "recovery to a time": [
        "restore-to-time",
        "--time",
        "2026-11-30T09:15:00Z",
        "--target",
        "staging",
    ],
}


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("command", COMMANDS)
def test_staging_that_is_production_spelled_otherwise_is_refused_before_any_write(
    local_env, make_database, monkeypatch, capsys, spelling, command
):
    production = marked(make_database("prod"))
    back_up(production)
    kept = keep_for_rollback(production)
    monkeypatch.setenv("DATABASE_URL", production)
    monkeypatch.setenv("STAGING_DATABASE_URL", SPELLINGS[spelling].format(dbname(production)))

    assert main(COMMANDS[command]) == 2

    line = one_line(capsys.readouterr().err)
    assert "STAGING_DATABASE_URL and DATABASE_URL reach the same database" in line
    assert marker_intact(production)
    assert databases_beside(production) == [kept]
    with psycopg.connect(production) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'"
        ).fetchone() == (0,)
    assert not (local_env / "store" / "test" / "audit").exists()


def test_another_database_on_the_production_server_is_staging(
    local_env, make_database, monkeypatch, capsys
):
    production = marked(make_database("prod"))
    back_up(production)
    staging = make_database("staging")
    monkeypatch.setenv("DATABASE_URL", production)
    monkeypatch.setenv("STAGING_DATABASE_URL", SPELLINGS["localhost"].format(dbname(staging)))

    assert main(COMMANDS["restore"]) == 0, capsys.readouterr().err

    assert marker_intact(staging)
    assert marker_intact(production)
    assert databases_beside(production) == []


def test_a_fleet_server_without_staging_says_so_not_staging_database_url(
    local_env, make_database, monkeypatch, capsys
):
    alpha_and_beta(local_env, monkeypatch, make_database)
    monkeypatch.setenv("STAGING_DATABASE_URL", SPELLINGS["localhost"].format("postgres"))

    assert main([*COMMANDS["rollback"], "--database", "alpha"]) == 2

    line = one_line(capsys.readouterr().err)
    assert "server 'main' of the fleet file has no staging_url_env" in line
    assert "STAGING_DATABASE_URL" not in line


def test_a_production_server_that_cannot_be_reached_stops_a_staging_write(
    local_env, make_database, monkeypatch, capsys
):
    staging = marked(make_database("staging"))
    kept = keep_for_rollback(staging)
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres:hunter2@127.0.0.1:1/app")
    monkeypatch.setenv("STAGING_DATABASE_URL", staging)

    assert main(COMMANDS["rollback"]) == 2

    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: cannot tell STAGING_DATABASE_URL from DATABASE_URL")
    assert "hunter2" not in line
    assert marker_intact(staging)
    assert databases_beside(staging) == [kept]


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=5):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture
def production_and_its_clone(private_postgres: PrivateCluster) -> Iterator[tuple[str, Cluster]]:
    """A database on a private cluster, and a second server cloned from that cluster by a
    physical backup (pg_basebackup): the same system identifier, database oids and names."""
    production = marked(private_postgres.create_database("pgvault_test_cloned"))

    def copy_of_production(data: Path) -> None:
        result = subprocess.run(
            [
                *(["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []),
                str(private_postgres.cluster.bindir / "pg_basebackup"),
                "-D",
                str(data),
                "-X",
                "stream",
                "--checkpoint=fast",
                "-h",
                "127.0.0.1",
                "-p",
                str(private_postgres.cluster.port),
                "-U",
                "postgres",
            ],
            env={**os.environ, "PGPASSWORD": private_postgres.cluster.url.password or ""},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    try:
        with restored_cluster(copy_of_production, superuser="postgres") as clone:
            wait_for(lambda: _answers(clone.url.secret), "the clone to accept connections")
            yield production, clone
    finally:
        with psycopg.connect(private_postgres.url("postgres"), autocommit=True) as conn:
            for (name,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname ^@ 'pgvault_test_cloned'"
            ).fetchall():
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_clone_of_production_on_another_server_is_staging(
    local_env, production_and_its_clone, monkeypatch, capsys
):
    production, clone = production_and_its_clone
    staging = clone.url.with_dbname(dbname(production)).secret
    identity = (
        "SELECT system_identifier, d.oid "
        "FROM pg_control_system(), pg_database d WHERE d.datname = current_database()"
    )
    with psycopg.connect(production) as prod, psycopg.connect(staging) as stag:
        assert prod.execute(identity).fetchone() == stag.execute(identity).fetchone()
    back_up(production)
    monkeypatch.setenv("DATABASE_URL", production)
    monkeypatch.setenv("STAGING_DATABASE_URL", staging)

    assert main(COMMANDS["restore"]) == 0, capsys.readouterr().err

    assert marker_intact(staging)
    with psycopg.connect(clone.url.secret) as conn:
        beside = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname ^@ %s",
            (dbname(production) + "_pre_restore_",),
        ).fetchone()
    assert beside == (1,)
    with psycopg.connect(production) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname ^@ %s", (dbname(production) + "_",)
        ).fetchone() == (0,)
