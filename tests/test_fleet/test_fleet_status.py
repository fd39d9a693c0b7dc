"""`pgvault status` and `list-backups` on a fleet: every database without --database, the
named one with it, and exactly as before without a fleet file."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
from test_defs.backup_history import write_history

from pgvault_assets.cli import main
from pgvault_assets.engine.basics.clock import latest_complete_day, utcnow
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.fleet import pin_database
from pgvault_assets.settings import load_settings
from tests.conftest import PG_SERVER_URL
from tests.test_fleet.helpers import write_fleet

SERVER = f"{PG_SERVER_URL}/postgres"


def vault_of(name: str) -> Vault:
    return Vault.from_settings(pin_database(load_settings(), os.environ, name))


def rows_of(out: str, name: str) -> list[str]:
    return [line for line in out.splitlines() if f" {name} " in line]


@pytest.fixture
def fleet_backed_up(local_env, monkeypatch):
    """alpha backed up daily to yesterday; beta stopped five days ago (stale)."""
    write_fleet(
        local_env,
        monkeypatch,
        servers={"main": (SERVER, 2), "other": (SERVER, 1)},
        databases={"alpha": ("main", "alpha_db"), "beta": ("other", "beta_db")},
    )
    yesterday = latest_complete_day(utcnow())
    write_history(vault_of("alpha"), yesterday - timedelta(days=9), yesterday)
    write_history(vault_of("beta"), yesterday - timedelta(days=9), yesterday - timedelta(days=5))
    return yesterday


def test_status_without_database_shows_one_row_per_database(fleet_backed_up, capsys):
    assert main(["status"]) == 1  # beta is stale

    out = capsys.readouterr().out
    (alpha,) = rows_of(out, "alpha")
    (beta,) = rows_of(out, "beta")
    assert fleet_backed_up.isoformat() in alpha and alpha.rstrip(" │").endswith("ok")
    assert (fleet_backed_up - timedelta(days=5)).isoformat() in beta and "critical" in beta


def test_status_with_database_shows_that_database_alone(fleet_backed_up, capsys):
    assert main(["status", "--database", "alpha"]) == 0

    out = capsys.readouterr().out
    assert "pgvault backup health: test/alpha" in out
    assert "last successful backup" in out and fleet_backed_up.isoformat() in out
    assert "beta" not in out


def test_status_and_list_backups_name_a_database_they_cannot_read_and_show_the_others(
    fleet_backed_up, monkeypatch, capsys
):
    monkeypatch.delenv("PGVAULT_TEST_OTHER_URL")

    assert main(["status"]) == 1

    out = capsys.readouterr().out
    (alpha,) = rows_of(out, "alpha")
    assert "ok" in alpha
    assert "error: PGVAULT_TEST_OTHER_URL is not set" in " ".join(rows_of(out, "beta"))

    assert main(["list-backups", "--json"]) == 1
    out, err = capsys.readouterr()
    assert {row["database"] for row in json.loads(out)} == {"alpha"}
    (line,) = err.splitlines()
    assert line.startswith("error: database beta: PGVAULT_TEST_OTHER_URL is not set")


def test_list_backups_without_database_lists_every_database_with_its_name(fleet_backed_up, capsys):
    assert main(["list-backups", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["database"] for row in rows} == {"alpha", "beta"}
    assert sum(row["database"] == "alpha" for row in rows) == 10
    assert all(row["key"].startswith(f"test/{row['database']}/") for row in rows)

    assert main(["list-backups"]) == 0
    out = capsys.readouterr().out
    assert len(rows_of(out, "alpha")) == 10 and len(rows_of(out, "beta")) == 5


def test_list_backups_with_database_lists_that_one_as_before(fleet_backed_up, capsys):
    assert main(["list-backups", "--database", "beta", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 5 and "database" not in rows[0]
    assert all(row["key"].startswith("test/beta/") for row in rows)


def test_without_a_fleet_file_status_and_list_backups_are_the_single_databases(local_env, capsys):
    yesterday = latest_complete_day(utcnow())
    write_history(Vault.from_settings(load_settings()), yesterday - timedelta(days=2), yesterday)

    assert main(["list-backups", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and "database" not in rows[0] and rows[0]["key"].startswith("test/2")
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "pgvault backup health: test" in out and "every database" not in out

    assert main(["status", "--database", "alpha"]) == 2
    assert "--database 'alpha' needs a fleet file" in capsys.readouterr().err


def test_status_compares_the_fleets_storage_with_the_one_budget(
    fleet_backed_up, capsys, monkeypatch
):
    """Each database is within BACKUP_STORAGE_BUDGET_BYTES on its own; the fleet is not."""
    alpha = sum(m.size_bytes for m in vault_of("alpha").list_manifests())
    beta = sum(m.size_bytes for m in vault_of("beta").list_manifests())
    monkeypatch.setenv("BACKUP_STORAGE_BUDGET_BYTES", str(max(alpha, beta) + 1))
    assert main(["status", "--database", "alpha"]) == 0
    capsys.readouterr()

    assert main(["status"]) == 1

    out = " ".join(capsys.readouterr().out.split())
    assert "warning: the fleet's backups use " in out
    assert "(BACKUP_STORAGE_BUDGET_BYTES); review retention or raise the budget" in out
