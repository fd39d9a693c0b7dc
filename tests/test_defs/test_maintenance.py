"""Retention and the weekly report as assets: what the UI and the store end up holding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dagster import materialize
from psycopg import sql

from pgvault_assets.defs import maintenance
from pgvault_assets.defs.resources import resource_defs
from pgvault_assets.engine.approvals import audit
from pgvault_assets.engine.basics.clock import utcnow
from pgvault_assets.engine.basics.names import database_beside
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.settings import DatabaseUrl, load_settings
from test_defs.backup_history import write_history
from tests.conftest import admin_connect
from tests.test_defs.single import kept_databases, retention_state, weekly_health_report


def test_the_monday_run_applies_retention_then_writes_the_report_to_the_store(local_env, instance):
    vault = Vault.from_settings(load_settings())
    today = utcnow().date()
    write_history(vault, today - timedelta(days=120), today - timedelta(days=1))

    result = materialize(
        [retention_state, weekly_health_report], instance=instance, resources=resource_defs()
    )

    assert result.success
    (retention,) = result.asset_materializations_for_node("retention_state")
    deleted = retention.metadata["deleted_keys"].value
    assert deleted and all(key.startswith("test/") for key in deleted)
    tiers = sum(retention.metadata[f"kept_{t}"].value for t in ("daily", "weekly", "monthly"))
    assert tiers == retention.metadata["kept_total"].value
    assert retention.metadata["blocked_reason"].value == ""
    kept = {m.date for m in vault.list_manifests()}
    assert len(kept) == retention.metadata["kept_total"].value
    assert {today - timedelta(days=n) for n in range(1, 31)} <= kept

    (report,) = result.asset_materializations_for_node("weekly_health_report")
    text = report.metadata["report"].value
    assert "| backups created | 7 | 30 |" in text
    assert "| success rate | 100.0% | 100.0% |" in text
    stored = vault.store.get_bytes(f"test/reports/{today.isoformat()}-health.md")
    assert stored is not None and stored.decode() == text
    assert len(report.metadata["daily_size_and_duration"].value.records) == 30


def test_retention_deletes_nothing_while_backups_are_stale(local_env, instance):
    vault = Vault.from_settings(load_settings())
    today = utcnow().date()
    write_history(vault, today - timedelta(days=200), today - timedelta(days=5))

    result = materialize([retention_state], instance=instance, resources=resource_defs())

    (retention,) = result.asset_materializations_for_node("retention_state")
    assert "36 h" in retention.metadata["blocked_reason"].value
    assert retention.metadata["deleted_keys"].value == []
    assert len(vault.list_manifests()) == 196


def test_the_monday_run_drops_databases_kept_beyond_the_bound_and_lists_them(
    local_env, instance, make_database, monkeypatch
):
    now = datetime(2025, 3, 10, 3, 0, tzinfo=UTC)
    staging = DatabaseUrl(make_database("staging"))
    monkeypatch.setenv("STAGING_DATABASE_URL", staging.secret)
    monkeypatch.setenv("RESTORE_KEEP_PREVIOUS_HOURS", "24")
    monkeypatch.setattr(maintenance, "utcnow", lambda: now)
    old, recent = (
        database_beside(staging.dbname, label, (now - age).strftime("%Y%m%d%H%M%S"))
        for label, age in (
            ("pre_restore", timedelta(hours=25)),
            ("rolled_back", timedelta(hours=23)),
        )
    )
    with admin_connect() as conn:
        for name in (old, recent):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    result = materialize([kept_databases], instance=instance, resources=resource_defs())

    assert result.success
    (materialization,) = result.asset_materializations_for_node("kept_databases")
    assert [d["database"] for d in materialization.metadata["dropped"].value] == [old]
    assert [k["database"] for k in materialization.metadata["kept"].value] == [recent]
    assert materialization.metadata["keep_previous_hours"].value == 24
    (record,) = audit.audit_records(Vault.from_settings(load_settings()), "maintenance")
    assert record.body["database"] == old
