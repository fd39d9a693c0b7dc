"""Every command on a fleet: the integrity check of a database's staging, production pinned to
the database its request names, and the commands that are environment- or cluster-wide."""

from __future__ import annotations

import json
import os
import shutil

import psycopg
import pytest

from pgvault_assets.engine.approvals import authorization as auth
from pgvault_assets.engine.backup.backup import backup_database
from pgvault_assets.engine.basics.clock import latest_complete_day, utcnow
from pgvault_assets.engine.postgres.postgres import previous_databases
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.fleet import pin_database
from pgvault_assets.settings import DatabaseUrl, load_settings
from tests.test_fleet.helpers import alpha_and_beta
from tests.test_recovery.helpers import run

DAY = latest_complete_day(utcnow())


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _owner(url: str) -> list[tuple[str]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT name FROM owner").fetchall()


@pytest.fixture
def fleet(local_env, make_database, private_postgres, monkeypatch):
    """alpha and beta on the test server, each with a table naming it and a backup of DAY;
    their server's staging is a private cluster. Yields their production URLs."""
    urls, _ = alpha_and_beta(
        local_env, monkeypatch, make_database, staging=private_postgres.url("postgres")
    )
    settings = load_settings()
    for name in urls:
        pinned = pin_database(settings, os.environ, name)
        backup_database(Vault.from_settings(pinned), pinned.require_database(), DAY)
    yield urls
    with psycopg.connect(private_postgres.url("postgres"), autocommit=True) as conn:
        for url in urls.values():
            for (staged,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname ^@ %s", [url.rsplit("/", 1)[1]]
            ).fetchall():
                conn.execute(f'DROP DATABASE "{staged}" WITH (FORCE)')


def _audit(capsys, name: str) -> list[dict]:
    code, out, err = run(capsys, "audit", "--database", name, "--json")
    assert code == 0, err
    return json.loads(out)


def _stage(capsys, name: str) -> None:
    """The manual's staging step for `name`: restore, then the integrity check it names."""
    code, out, err = run(
        capsys,
        *("restore-from-backup", "--database", name, "--date", str(DAY), "--target", "staging"),
    )
    assert code == 0, err
    next_step = f"pgvault check-database-integrity --database {name} --target staging"
    assert next_step in out
    code, out, err = run(capsys, *next_step.split()[1:], "--date", str(DAY))
    assert code == 0, err


def test_the_integrity_check_of_a_fleet_database_staging_is_audited_for_it_alone(
    fleet, private_postgres, capsys
):
    _stage(capsys, "alpha")

    (check,) = [r for r in _audit(capsys, "alpha") if r["record"] == "integrity-check"]
    assert check["passed"] and check["database"] == fleet["alpha"].rsplit("/", 1)[1]
    assert _audit(capsys, "beta") == []
    assert _owner(private_postgres.url(fleet["alpha"].rsplit("/", 1)[1])) == [("alpha",)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["check-database-integrity", "--database", "staging"],
            "pass --database with one of: alpha, beta",
        ),
        (
            ["check-database-integrity", "--database", "alpha"],
            "needs --target staging or --target production",
        ),
        (
            [
                *("check-database-integrity", "--database", "alpha"),
                *("--database", "staging", "--target", "production"),
            ],
            "--database staging and --target production name different targets",
        ),
        (["doctor"], "pass --database with one of: alpha, beta"),
        (["init-storage", "--database", "alpha"], "init-storage is environment-wide"),
        (["key-fingerprint", "--database", "alpha"], "key-fingerprint is environment-wide"),
        (["pitr", "status"], "pass --database with one of: alpha, beta"),
        (["pitr", "init"], "pass --database with one of: alpha, beta"),
        (
            ["restore-to-time", "--time", "2026-03-14T09:00:00Z", "--target", "staging"],
            "pass --database with one of: alpha, beta",
        ),
    ],
)
def test_a_fleet_command_that_cannot_run_as_asked_says_why_in_one_line(
    fleet, capsys, argv, message
):
    try:
        code, _, err = run(capsys, *argv)
    except SystemExit as refused:  # argparse's refusals end the parse with its status
        code, err = refused.code, capsys.readouterr().err

    assert code == 2
    assert message in _one_line(err)


def test_the_doctor_of_a_fleet_database_checks_that_database(fleet, capsys):
    _, out, _ = run(capsys, "doctor", "--database", "beta")

    assert fleet["beta"].rsplit("/", 1)[1] in out
    assert fleet["alpha"].rsplit("/", 1)[1] not in out
    # Its URL came from its server's variable, not DATABASE_URL: the row names the database.
    assert "database (beta)" in out and "DATABASE_URL" not in out


def test_a_request_for_one_database_cannot_restore_another_production(
    fleet, approvers, local_env, capsys
):
    _stage(capsys, "alpha")
    code, out, err = run(
        capsys,
        *("request-restore", "--database", "alpha", "--date", str(DAY)),
        *("--target", "production", "--reason", "alpha's orders corrupted"),
    )
    assert code == 0, err
    request_id = out.split()[0]
    for key in (approvers.alice, approvers.bob):
        code, _, err = run(
            capsys, "approve-restore", request_id, "--database", "alpha", "--key", str(key)
        )
        assert code == 0, err
    restore = ["restore-from-backup", "--date", str(DAY), "--target", "production"]
    restore += ["--request", request_id, "--skip-confirmation"]

    code, _, err = run(capsys, "approve-restore", request_id, "--database", "beta", "--key", "k")
    assert code != 0 and f"no request {request_id} in test/beta" in _one_line(err)
    code, _, err = run(capsys, *restore, "--database", "beta")
    assert code != 0 and f"no request {request_id} in test/beta" in _one_line(err)

    # Even copied into beta's audit trail with its approvals, it stays alpha's request.
    store = local_env / "store"
    shutil.copytree(store / "test" / "alpha" / "audit", store / "test" / "beta" / "audit")
    code, _, err = run(capsys, *restore, "--database", "beta")
    assert code != 0 and f"request {request_id} does not match its key" in _one_line(err)

    assert _owner(fleet["beta"]) == [("beta",)]
    assert previous_databases(DatabaseUrl(fleet["beta"])) == []
    alpha_records = [r["record"] for r in _audit(capsys, "alpha")]
    assert alpha_records.count("approval") == 2 and "request" in alpha_records

    code, _, err = run(capsys, *restore, "--database", "alpha")
    assert code == 0, err
    assert len(previous_databases(DatabaseUrl(fleet["alpha"]))) == 1
    assert "execution" in [r["record"] for r in _audit(capsys, "alpha")]
    assert (
        auth.read_request(
            Vault.from_settings(pin_database(load_settings(), os.environ, "alpha")), request_id
        ).database
        == fleet["alpha"].rsplit("/", 1)[1]
    )


def test_a_request_before_staging_names_the_database_in_the_steps_to_take(fleet, approvers, capsys):
    code, _, err = run(
        capsys,
        *("request-restore", "--database", "beta", "--date", str(DAY)),
        *("--target", "production", "--reason", "beta's orders corrupted"),
    )

    assert code != 0
    line = _one_line(err)
    assert f"pgvault restore-from-backup --database beta --date {DAY} --target staging" in line
    assert "pgvault check-database-integrity --database beta --target staging" in line
