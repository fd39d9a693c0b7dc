"""The Monday maintenance of a fleet: each database's retention, the fleet's report and kept
databases, one database's trouble never costing the others their week."""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, date, datetime, timedelta

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance, materialize
from psycopg import sql
from test_defs.backup_history import write_history

from pgvault_assets.defs import maintenance
from pgvault_assets.defs.resources import resource_defs
from pgvault_assets.engine.approvals import audit
from pgvault_assets.engine.basics.clock import latest_complete_day, utcnow
from pgvault_assets.engine.basics.names import database_beside
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.fleet import load_fleet, pin_database
from pgvault_assets.settings import load_settings
from tests.conftest import PG_SERVER_URL, admin_connect
from tests.test_fleet.helpers import fleet_backup, fleet_maintenance_assets, write_fleet

MONDAY = datetime(2025, 3, 10, 3, 0, tzinfo=UTC)
fleet_retention_state, fleet_weekly_health_report, fleet_kept_databases = fleet_maintenance_assets()
SERVER = f"{PG_SERVER_URL}/postgres"


def vault_of(name: str) -> Vault:
    return Vault.from_settings(pin_database(load_settings(), os.environ, name))


def backed_up(name: str) -> set[date]:
    return {m.date for m in vault_of(name).list_manifests()}


def step_failure(result) -> str:
    (event,) = result.get_step_failure_events()
    return event.step_failure_data.user_failure_data.description


@pytest.fixture
def at_monday(monkeypatch) -> datetime:
    monkeypatch.setattr(maintenance, "utcnow", lambda: MONDAY)
    return MONDAY


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def test_retention_expires_each_databases_backups_by_its_own_policy(
    local_env, monkeypatch, instance, at_monday
):
    """alpha keeps 7 daily backups (its override), beta the default 30: a Thursday 18 days
    old is gone from alpha and still in beta."""
    write_fleet(
        local_env,
        monkeypatch,
        servers={"main": (SERVER, 2)},
        databases={"alpha": ("main", "alpha_db"), "beta": ("main", "beta_db")},
        retention={"alpha": {"daily_days": 7}},
    )
    thursday = date(2025, 2, 20)
    for name in ("alpha", "beta"):
        write_history(vault_of(name), date(2025, 1, 20), date(2025, 3, 9))

    result = materialize([fleet_retention_state], instance=instance, resources=resource_defs())

    assert result.success
    assert thursday not in backed_up("alpha") and thursday in backed_up("beta")
    (materialization,) = result.asset_materializations_for_node("fleet__retention_state")
    rows = {r.data["database"]: r.data for r in materialization.metadata["databases"].value.records}
    assert set(rows) == {"alpha", "beta"}
    assert rows["alpha"]["deleted_count"] > rows["beta"]["deleted_count"] > 0
    deleted = materialization.metadata["deleted_keys"].value
    assert f"test/alpha/{thursday.isoformat()}/manifest.json" in deleted
    assert not any(key.startswith("test/beta/2025-02-2") for key in deleted)
    assert materialization.metadata["deleted_count"].value == (
        rows["alpha"]["deleted_count"] + rows["beta"]["deleted_count"]
    )


def test_a_database_whose_server_variable_is_unset_fails_alone_named_in_one_line(
    local_env, monkeypatch, instance, at_monday
):
    write_fleet(
        local_env,
        monkeypatch,
        servers={"main": (SERVER, 2), "other": (SERVER, 1)},
        databases={"alpha": ("main", "alpha_db"), "gamma": ("other", "gamma_db")},
        retention={"alpha": {"daily_days": 7}},
    )
    write_history(vault_of("alpha"), date(2025, 1, 20), date(2025, 3, 9))
    monkeypatch.delenv("PGVAULT_TEST_OTHER_URL")

    result = materialize(
        [fleet_retention_state], instance=instance, resources=resource_defs(), raise_on_error=False
    )

    assert not result.success
    assert date(2025, 2, 20) not in backed_up("alpha")  # alpha's retention was done
    line = step_failure(result)
    assert "\n" not in line
    assert line.startswith("retention failed for 1 of 2 databases (gamma: PGVAULT_TEST_OTHER_URL")
    assert "alpha" not in line


def test_the_weekly_report_has_a_row_per_database_its_failed_runs_and_is_stored(
    local_env, monkeypatch, instance
):
    """Dates relative to the real day: the failed run is a real backup of yesterday."""
    path = write_fleet(
        local_env,
        monkeypatch,
        servers={"main": (SERVER, 2), "other": (SERVER, 1)},
        databases={"alpha": ("main", "alpha_db"), "beta": ("other", "beta_db")},
    )
    yesterday = latest_complete_day(utcnow())
    write_history(vault_of("alpha"), yesterday - timedelta(days=40), yesterday)
    write_history(vault_of("beta"), yesterday - timedelta(days=40), yesterday - timedelta(days=3))
    with monkeypatch.context() as unset:
        unset.delenv("PGVAULT_TEST_OTHER_URL")
        failed = materialize(
            [fleet_backup(load_fleet(path), "beta")],
            instance=instance,
            resources=resource_defs(),
            partition_key=yesterday.isoformat(),
            raise_on_error=False,
        )
    assert not failed.success

    result = materialize([fleet_weekly_health_report], instance=instance, resources=resource_defs())

    assert result.success
    (report,) = result.asset_materializations_for_node("fleet__weekly_health_report")
    rows = {r.data["database"]: r.data for r in report.metadata["databases"].value.records}
    assert rows["alpha"]["backups_7_days"] == 7 and rows["alpha"]["failed_runs_7_days"] == 0
    assert rows["beta"]["backups_7_days"] == 4 and rows["beta"]["failed_runs_7_days"] == 1
    assert rows["alpha"]["last_backup"] == yesterday.isoformat()
    text = report.metadata["report"].value
    assert text.count("| alpha |") == 1 and text.count("| beta |") == 1
    attention = text.split("## Needs attention", 1)[1]
    assert "**beta**: no backup has succeeded in the last 36 h" in attention
    assert f"**beta**: failed on {yesterday.isoformat()}: PGVAULT_TEST_OTHER_URL is not set" in (
        attention
    )
    assert "**alpha**" not in attention
    stored = vault_of("alpha").store.get_bytes(f"test/reports/{utcnow().date()}-fleet-health.md")
    assert stored is not None and stored.decode() == text


def test_the_report_names_a_database_it_cannot_read_and_still_writes_the_others(
    local_env, monkeypatch, instance, at_monday
):
    write_fleet(
        local_env,
        monkeypatch,
        servers={"main": (SERVER, 2), "other": (SERVER, 1)},
        databases={"alpha": ("main", "alpha_db"), "gamma": ("other", "gamma_db")},
    )
    write_history(vault_of("alpha"), date(2025, 2, 1), date(2025, 3, 9))
    monkeypatch.delenv("PGVAULT_TEST_OTHER_URL")

    result = materialize(
        [fleet_weekly_health_report],
        instance=instance,
        resources=resource_defs(),
        raise_on_error=False,
    )

    assert not result.success
    assert step_failure(result).startswith("the weekly report failed for 1 of 2 databases (gamma:")
    stored = vault_of("alpha").store.get_bytes("test/reports/2025-03-10-fleet-health.md")
    assert stored is not None
    text = stored.decode()
    assert "| alpha | 2025-03-09 | 7 | 0 | 100.0% |" in text
    assert "- **gamma**: could not be read: PGVAULT_TEST_OTHER_URL is not set" in text


def test_kept_databases_are_dropped_beside_each_databases_target_and_audited_there(
    local_env, monkeypatch, instance, at_monday, make_database
):
    urls = {name: make_database(name) for name in ("alpha", "beta")}
    dbnames = {name: url.rsplit("/", 1)[1] for name, url in urls.items()}
    write_fleet(
        local_env,
        monkeypatch,
        servers={"main": (SERVER, 2)},
        databases={name: ("main", dbname) for name, dbname in dbnames.items()},
    )
    monkeypatch.setenv("RESTORE_KEEP_PREVIOUS_HOURS", "24")

    def stamp(age: timedelta) -> str:
        return (MONDAY - age).strftime("%Y%m%d%H%M%S")

    old_alpha = database_beside(dbnames["alpha"], "pre_restore", stamp(timedelta(hours=30)))
    old_beta = database_beside(dbnames["beta"], "rolled_back", stamp(timedelta(hours=25)))
    new_beta = database_beside(dbnames["beta"], "pre_restore", stamp(timedelta(hours=2)))
    with admin_connect() as conn:
        for name in (old_alpha, old_beta, new_beta):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    result = materialize([fleet_kept_databases], instance=instance, resources=resource_defs())

    assert result.success
    (materialization,) = result.asset_materializations_for_node("fleet__kept_databases")
    dropped = {d["database"] for d in materialization.metadata["dropped"].value}
    assert dropped == {old_alpha, old_beta}
    assert [k["database"] for k in materialization.metadata["kept"].value] == [new_beta]
    rows = {r.data["database"]: r.data for r in materialization.metadata["databases"].value.records}
    assert rows["alpha"]["dropped_count"] == 1 and rows["beta"]["kept_count"] == 1
    with admin_connect() as conn:
        left = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
    assert new_beta in left and not {old_alpha, old_beta} & left
    for name, kept in (("alpha", old_alpha), ("beta", old_beta)):
        (record,) = audit.audit_records(vault_of(name), "maintenance")
        assert record.body["database"] == kept


def test_a_database_removed_from_the_file_is_reported_with_the_backups_it_left(
    local_env, monkeypatch, instance, at_monday
):
    """Its backups stay (nothing expires them any more): the report says so every week, so
    they are neither lost nor forgotten."""
    servers = {"main": (SERVER, 2)}
    write_fleet(
        local_env,
        monkeypatch,
        servers=servers,
        databases={"alpha": ("main", "a"), "old": ("main", "o")},
    )
    write_history(vault_of("alpha"), date(2025, 3, 1), date(2025, 3, 9))
    write_history(vault_of("old"), date(2025, 2, 1), date(2025, 2, 3), size_bytes=1000)
    for name in ("alpha", "old"):
        instance.report_runless_asset_event(AssetMaterialization(AssetKey(["backup", name])))
    write_fleet(local_env, monkeypatch, servers=servers, databases={"alpha": ("main", "a")})

    result = materialize([fleet_weekly_health_report], instance=instance, resources=resource_defs())

    assert result.success
    (report,) = result.asset_materializations_for_node("fleet__weekly_health_report")
    text = report.metadata["report"].value
    removed = text.split("## No longer in the fleet file", 1)[1].split("##", 1)[0]
    assert "| old | 3 | 2025-02-03 | 2.9 KiB |" in removed and "alpha" not in removed
    attention = text.split("## Needs attention", 1)[1]
    assert "**old**: no longer in the fleet file; its 3 backups (2.9 KiB) are kept" in attention
    assert (
        len(
            Vault.from_settings(
                dataclasses.replace(load_settings(), database="old")
            ).list_manifests()
        )
        == 3
    )
