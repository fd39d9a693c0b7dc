"""Retention and the weekly report as assets: what the UI and the store end up holding."""

from __future__ import annotations

from datetime import timedelta

from dagster import materialize

from pgvault_assets.defs.maintenance import retention_state, weekly_health_report
from pgvault_assets.defs.resources import resource_defs
from pgvault_assets.engine.clock import utcnow
from pgvault_assets.engine.vault import Vault
from pgvault_assets.settings import load_settings
from test_defs.backup_history import write_history


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
