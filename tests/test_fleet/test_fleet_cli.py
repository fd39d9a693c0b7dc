"""`--database NAME`: each command works on one fleet database, named when there are several."""

from __future__ import annotations

import json

import psycopg
import pytest

from pgvault_assets.cli import main
from pgvault_assets.engine.basics.clock import latest_complete_day, utcnow
from tests.conftest import PG_SERVER_URL
from tests.test_fleet.helpers import alpha_and_beta, write_fleet


@pytest.fixture
def fleet_of_two(local_env, make_database, monkeypatch) -> dict[str, str]:
    """Databases alpha and beta on one server, each with a table naming it; their URLs."""
    urls, _ = alpha_and_beta(local_env, monkeypatch, make_database)
    return urls


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["cleanup"],
        ["verify-backup", "--date", "2026-03-14"],
        ["restore-from-backup", "--date", "2026-03-14", "--target", "staging"],
        ["backup"],
    ],
)
def test_a_fleet_of_several_needs_database_and_names_the_choices(fleet_of_two, capsys, argv):
    assert main(argv) == 2
    assert _one_line_error(capsys).endswith("pass --database with one of: alpha, beta")


def test_an_unknown_database_is_one_line_naming_the_choices(fleet_of_two, capsys):
    assert main(["list-backups", "--database", "gamma"]) == 2
    assert "no database named 'gamma'; choose one of: alpha, beta" in _one_line_error(capsys)


def test_backup_list_and_verify_work_on_the_named_database_alone(fleet_of_two, capsys):
    day = latest_complete_day(utcnow()).isoformat()
    assert main(["backup", "--database", "alpha"]) == 0
    capsys.readouterr()

    assert main(["list-backups", "--database", "alpha", "--json"]) == 0
    assert [row["date"] for row in json.loads(capsys.readouterr().out)] == [day]
    assert main(["list-backups", "--database", "beta", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    assert main(["verify-backup", "--database", "alpha", "--date", day]) == 0
    assert "is intact" in capsys.readouterr().out
    assert main(["verify-backup", "--database", "beta", "--date", day]) != 0
    assert f"no backup for {day}" in _one_line_error(capsys)


def test_restore_to_staging_takes_the_database_and_its_server_staging(
    fleet_of_two, private_postgres, local_env, monkeypatch, capsys
):
    """Each server's staging target is `staging_url_env`'s server, with the database's name."""
    write_fleet(
        local_env,
        monkeypatch,
        servers={"main": (f"{PG_SERVER_URL}/postgres", 2)},
        databases={name: ("main", url.rsplit("/", 1)[1]) for name, url in fleet_of_two.items()},
        staging={"main": private_postgres.url("postgres")},
    )
    day = latest_complete_day(utcnow()).isoformat()
    assert main(["backup", "--database", "beta"]) == 0
    capsys.readouterr()
    restore = ["restore-from-backup", "--date", day, "--target", "staging"]

    assert main([*restore, "--database", "alpha"]) != 0
    assert f"no backup for {day}" in _one_line_error(capsys)
    assert main([*restore, "--database", "beta"]) == 0

    staged = private_postgres.url(fleet_of_two["beta"].rsplit("/", 1)[1])
    try:
        with psycopg.connect(staged) as conn:
            assert conn.execute("SELECT name FROM owner").fetchall() == [("beta",)]
    finally:
        with psycopg.connect(private_postgres.url("postgres"), autocommit=True) as conn:
            for (name,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname ^@ %s",
                [fleet_of_two["beta"].rsplit("/", 1)[1]],
            ).fetchall():
                conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_fleet_show_lists_each_database_with_its_server_pool_and_limit(fleet_of_two, capsys):
    assert main(["fleet", "show"]) == 0
    out, err = capsys.readouterr()
    assert out.count("pgvault/server/main") == 2 and "alpha" in out and "beta" in out
    assert err == ""
