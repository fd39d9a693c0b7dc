"""The weekly maintenance's figures: one row per database and the totals across them, for
retention, the health report and the databases restores kept.

Plain values (numbers, text, lists): the maintenance assets (defs/maintenance.py) show the rows
as a table and the totals as metadata, which Dagster types from the values themselves.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from pgvault_assets.engine.backup.cleanup import CleanupResult
from pgvault_assets.engine.monitoring.report import DatabaseHealth
from pgvault_assets.engine.recovery.kept_databases import KeptDatabasesResult

Columns = tuple[tuple[str, str], ...]
"""Each column's name and kind, as a table's schema says them."""

TIERS = ("daily", "weekly", "monthly")
RETENTION_COLUMNS: Columns = (
    ("database", "string"),
    *((f"kept_{tier}", "int") for tier in TIERS),
    ("deleted_count", "int"),
    ("storage_used_bytes", "int"),
    ("note", "string"),
)
REPORT_COLUMNS: Columns = (
    ("database", "string"),
    ("last_backup", "string"),
    ("backups_7_days", "int"),
    ("failed_runs_7_days", "int"),
    ("success_rate_30_days", "float"),
    ("storage_used_bytes", "int"),
    ("note", "string"),
)
KEPT_COLUMNS: Columns = (
    ("database", "string"),
    ("dropped_count", "int"),
    ("kept_count", "int"),
    ("note", "string"),
)


def retention_row(name: str, result: CleanupResult | None, failed: str | None) -> dict[str, Any]:
    if result is None:
        return {"database": name, "note": f"failed: {failed}"}
    plan = result.plan
    return {
        "database": name,
        **{f"kept_{tier}": plan.kept_per_tier.get(tier, 0) for tier in TIERS},
        "deleted_count": len(result.deleted_backups),
        "storage_used_bytes": plan.storage_kept_bytes,
        "note": plan.blocked_reason
        or "; ".join(result.repair_lines() + list(result.kept_leftovers)),
    }


def retention_totals(done: Collection[CleanupResult]) -> dict[str, Any]:
    return {
        **{f"kept_{tier}": sum(r.plan.kept_per_tier.get(tier, 0) for r in done) for tier in TIERS},
        "kept_total": sum(len(r.plan.keep) for r in done),
        "deleted_count": sum(len(r.deleted_backups) for r in done),
        "deleted_keys": [k for r in done for k in r.deleted_keys],
        "storage_used_bytes": sum(r.plan.storage_kept_bytes for r in done),
        "repaired": [x.to_dict() for r in done for x in r.repairs],
        "repaired_count": sum(r.repaired_count for r in done),
        "leftovers_kept": [x for r in done for x in r.kept_leftovers],
    }


def success_rate_percent(health: DatabaseHealth) -> float:
    rate = health.month.success_rate if health.month else None
    return round(rate * 100, 2) if rate is not None else 0.0


def report_row(health: DatabaseHealth) -> dict[str, Any]:
    week, month = health.week, health.month
    if week is None or month is None:
        return {"database": health.name, "note": f"failed: {health.error}"}
    return {
        "database": health.name,
        "last_backup": month.last_success_day.isoformat() if month.last_success_day else "never",
        "backups_7_days": week.backups_created,
        "failed_runs_7_days": week.failure_count,
        "success_rate_30_days": success_rate_percent(health),
        "storage_used_bytes": month.storage_used_bytes,
        "note": "",
    }


def report_totals(health: Collection[DatabaseHealth]) -> dict[str, Any]:
    """The fleet's week: its lowest success rate, the sums of the rest."""
    return {
        "backups_created_7_days": sum(h.week.backups_created for h in health if h.week),
        "failed_runs_7_days": sum(h.week.failure_count for h in health if h.week),
        "success_rate_30_days": float(min((success_rate_percent(h) for h in health), default=0)),
        "storage_used_bytes": sum(h.month.storage_used_bytes for h in health if h.month),
    }


def kept_row(name: str, result: KeptDatabasesResult | None, failed: str | None) -> dict[str, Any]:
    if result is None:
        return {"database": name, "note": f"failed: {failed}"}
    return {
        "database": name,
        "dropped_count": len(result.dropped),
        "kept_count": len(result.kept),
        "note": "; ".join(f"left for next week: {line}" for line in result.skipped),
    }


def kept_totals(done: Collection[KeptDatabasesResult]) -> dict[str, Any]:
    return {
        "dropped_count": sum(len(r.dropped) for r in done),
        "dropped": [kept.to_dict() for r in done for kept in r.dropped],
        "kept": [kept.to_dict() for r in done for kept in r.kept],
    }
