"""Monday 03:00 UTC across the fleet: retention, the weekly report and the kept databases.

The single database's maintenance (maintenance.py), done database by database with the
settings `--database NAME` would give each (its namespace, its retention overrides, its
servers). A fleet of hundreds always has one database in trouble (a server variable not set
yet, a store prefix it cannot read): that one is logged and recorded in its row, the others
are still done, and the asset fails at the end with one line naming each failed database, so
the trouble shows in the UI without costing the rest their week.
"""

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Generic, TypeVar

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSelection,
    DefaultScheduleStatus,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
    define_asset_job,
)

from pgvault_assets.defs.history import failed_runs_by_key
from pgvault_assets.defs.naming import fleet_backup_key
from pgvault_assets.defs.resources import VaultResource
from pgvault_assets.engine import names
from pgvault_assets.engine.cleanup import CleanupResult, run_cleanup
from pgvault_assets.engine.clock import utcnow
from pgvault_assets.engine.fleet import each_database_apart
from pgvault_assets.engine.kept_databases import KeptDatabasesResult, drop_expired_kept_databases
from pgvault_assets.engine.report import (
    DatabaseHealth,
    FormerDatabase,
    database_health,
    former_database,
    render_fleet_report,
)
from pgvault_assets.engine.vault import Vault
from pgvault_assets.errors import PgvaultError
from pgvault_assets.redact import redact
from pgvault_assets.settings import Settings

FLEET_RETENTION_KEY = AssetKey(["fleet", "retention_state"])
FLEET_REPORT_KEY = AssetKey(["fleet", "weekly_health_report"])
FLEET_KEPT_DATABASES_KEY = AssetKey(["fleet", "kept_databases"])
GROUP = "fleet_maintenance"

T = TypeVar("T")


@dataclass
class EachDatabase(Generic[T]):
    """What one piece of work gave for each database, and why it failed for the others."""

    done: dict[str, T] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def failure_line(self, what: str) -> str:
        """One line for the UI naming every database that failed and why."""
        reasons = "; ".join(f"{name}: {reason}" for name, reason in self.failed.items())
        return (
            f"{what} failed for {len(self.failed)} of {len(self.order)} databases ({reasons}); "
            "the others were done, see the table in this step's metadata"
        )


def for_each_database(
    context: AssetExecutionContext,
    vault: VaultResource,
    work: Callable[[str, Settings], T],
) -> EachDatabase[T]:
    """`work` for every database of the fleet, each on its own: one's failure is logged and
    recorded, never raised, so it cannot stop the others."""
    try:
        settings = vault.settings()
        databases = each_database_apart(settings, vault.environ())
    except PgvaultError as exc:  # the fleet file itself: nothing can be done for anyone
        raise Failure(description=str(exc)) from None
    outcome: EachDatabase[T] = EachDatabase()
    for name, pinned in databases:
        outcome.order.append(name)
        try:
            if isinstance(pinned, PgvaultError):
                raise pinned
            outcome.done[name] = work(name, pinned)
        except PgvaultError as exc:
            outcome.failed[name] = redact(" ".join(str(exc).split()))
        except Exception as exc:  # one database's surprise must not cost the others their week
            # Its message only, redacted: a traceback's frames may hold a server's URL.
            outcome.failed[name] = redact(f"unexpected {type(exc).__name__}: {exc}")
        if name in outcome.failed:
            context.log.error(f"{name}: {outcome.failed[name]}")
    return outcome


def _table(columns: Sequence[tuple[str, str]], rows: list[dict[str, object]]) -> MetadataValue:
    """One row per database; a cell a failed database has no figure for is empty (None)."""
    return MetadataValue.table(
        records=[TableRecord({name: row.get(name) for name, _ in columns}) for row in rows],
        schema=TableSchema(columns=[TableColumn(name, kind) for name, kind in columns]),
    )


def _finish(
    outcome: EachDatabase[T], what: str, metadata: dict[str, MetadataValue]
) -> MaterializeResult:
    metadata = {
        **metadata,
        "databases_done": MetadataValue.int(len(outcome.done)),
        "databases_failed": MetadataValue.json(outcome.failed),
    }
    if outcome.failed:
        raise Failure(description=outcome.failure_line(what), metadata=metadata)
    return MaterializeResult(metadata=metadata)


RETENTION_COLUMNS = (
    ("database", "string"),
    ("kept_daily", "int"),
    ("kept_weekly", "int"),
    ("kept_monthly", "int"),
    ("deleted_count", "int"),
    ("storage_used_bytes", "int"),
    ("note", "string"),
)


def _retention_row(name: str, result: CleanupResult | None, failed: str | None) -> dict:
    if result is None:
        return {"database": name, "note": f"failed: {failed}"}
    plan = result.plan
    return {
        "database": name,
        **{
            f"kept_{tier}": plan.kept_per_tier.get(tier, 0)
            for tier in ("daily", "weekly", "monthly")
        },
        "deleted_count": len(result.deleted_backups),
        "storage_used_bytes": plan.storage_kept_bytes,
        "note": plan.blocked_reason
        or "; ".join(result.repair_lines() + list(result.kept_leftovers)),
    }


@asset(
    key=FLEET_RETENTION_KEY,
    group_name=GROUP,
    description=(
        "Each database's backups tiered and expired by its retention (the fleet file's "
        "override, else BACKUP_RETENTION_DAYS_*), never below 7, never while stale; what "
        "interrupted runs left removed. A database that fails is named; the others are done."
    ),
)
def fleet_retention_state(
    context: AssetExecutionContext, vault: VaultResource
) -> MaterializeResult:
    now = utcnow()

    def clean(name: str, settings: Settings) -> CleanupResult:
        result = run_cleanup(Vault.from_settings(settings), settings.retention, now=now)
        if result.plan.blocked_reason:
            context.log.warning(f"{name}: {result.plan.blocked_reason}")
        for line in result.repair_lines():
            context.log.info(f"{name}: repaired: {line}")
        return result

    outcome = for_each_database(context, vault, clean)
    rows = [
        _retention_row(name, outcome.done.get(name), outcome.failed.get(name))
        for name in outcome.order
    ]
    done = outcome.done.values()
    return _finish(
        outcome,
        "retention",
        {
            "databases": _table(RETENTION_COLUMNS, rows),
            "kept_total": MetadataValue.int(sum(len(r.plan.keep) for r in done)),
            "deleted_count": MetadataValue.int(sum(len(r.deleted_backups) for r in done)),
            "deleted_keys": MetadataValue.json([k for r in done for k in r.deleted_keys]),
            "storage_used_bytes": MetadataValue.int(sum(r.plan.storage_kept_bytes for r in done)),
        },
    )


REPORT_COLUMNS = (
    ("database", "string"),
    ("last_backup", "string"),
    ("backups_7_days", "int"),
    ("failed_runs_7_days", "int"),
    ("success_rate_30_days", "float"),
    ("storage_used_bytes", "int"),
    ("note", "string"),
)


def _report_row(health: DatabaseHealth) -> dict:
    week, month = health.week, health.month
    if week is None or month is None:
        return {"database": health.name, "note": f"failed: {health.error}"}
    rate = month.success_rate
    return {
        "database": health.name,
        "last_backup": month.last_success_day.isoformat() if month.last_success_day else "never",
        "backups_7_days": week.backups_created,
        "failed_runs_7_days": week.failure_count,
        "success_rate_30_days": round(rate * 100, 2) if rate is not None else 0.0,
        "storage_used_bytes": month.storage_used_bytes,
        "note": "",
    }


def former_databases(
    context: AssetExecutionContext, settings: Settings, current: set[str]
) -> list[FormerDatabase]:
    """The databases Dagster remembers a backup asset of (`backup/<name>`) that the fleet file
    no longer lists, with what their folders still hold: nothing expires them any more."""
    names = sorted(
        key.path[1]
        for key in context.instance.get_asset_keys(prefix=["backup"])
        if len(key.path) == 2 and key.path[1] not in current
    )
    former = []
    for name in names:
        try:
            vault = Vault.from_settings(dataclasses.replace(settings, database=name))
            former.append(former_database(name, vault.list_manifests()))
        except PgvaultError as exc:
            context.log.warning(f"{name} (no longer in the fleet file): {redact(str(exc))}")
    return former


@asset(
    key=FLEET_REPORT_KEY,
    deps=[FLEET_RETENTION_KEY],
    group_name=GROUP,
    description=(
        "The weekly health report of the fleet, one row per database and then what needs "
        "attention; copied to the store as {environment}/reports/{date}-fleet-health.md."
    ),
)
def fleet_weekly_health_report(
    context: AssetExecutionContext, vault: VaultResource
) -> MaterializeResult:
    now = utcnow()
    today = now.date()
    try:
        settings = vault.settings()
        databases = each_database_apart(settings, vault.environ())
    except PgvaultError as exc:
        raise Failure(description=str(exc)) from None
    keys = {name: fleet_backup_key(name) for name, _ in databases}
    failures = failed_runs_by_key(
        context.instance,
        {key: name for name, key in keys.items()},
        now - timedelta(days=31),
        settings.environment,
    )

    def figures(name: str, pinned: Settings) -> DatabaseHealth:
        manifests = Vault.from_settings(pinned).list_manifests()
        return database_health(name, manifests, failures[keys[name]], today=today)

    outcome = for_each_database(context, vault, figures)
    health = [
        outcome.done.get(name) or DatabaseHealth(name, error=outcome.failed[name])
        for name in outcome.order
    ]
    former = former_databases(context, settings, set(keys))
    text = render_fleet_report(
        settings.environment,
        health,
        generated_at=now,
        storage_budget_bytes=settings.storage_budget_bytes,
        former=former,
    )
    store = Vault.from_settings(settings).store
    key = names.fleet_report_key(settings.environment, today)
    store.put_bytes(key, text.encode())
    done = [h.month for h in health if h.month is not None]
    return _finish(
        outcome,
        "the weekly report",
        {
            "report": MetadataValue.md(text),
            "report_location": MetadataValue.path(f"{store.location}/{key}"),
            "databases": _table(REPORT_COLUMNS, [_report_row(h) for h in health]),
            "backups_created_7_days": MetadataValue.int(
                sum(h.week.backups_created for h in health if h.week is not None)
            ),
            "failed_runs_7_days": MetadataValue.int(
                sum(h.week.failure_count for h in health if h.week is not None)
            ),
            "storage_used_bytes": MetadataValue.int(sum(m.storage_used_bytes for m in done)),
        },
    )


KEPT_COLUMNS = (
    ("database", "string"),
    ("dropped_count", "int"),
    ("kept_count", "int"),
    ("note", "string"),
)


def _kept_row(name: str, result: KeptDatabasesResult | None, failed: str | None) -> dict:
    if result is None:
        return {"database": name, "note": f"failed: {failed}"}
    return {
        "database": name,
        "dropped_count": len(result.dropped),
        "kept_count": len(result.kept),
        "note": "; ".join(f"left for next week: {line}" for line in result.skipped),
    }


@asset(
    key=FLEET_KEPT_DATABASES_KEY,
    group_name=GROUP,
    description=(
        "The databases each database's restores and rollbacks kept beside its staging and "
        "production targets: dropped once older than RESTORE_KEEP_PREVIOUS_HOURS, audited in "
        "that database's trail."
    ),
)
def fleet_kept_databases(context: AssetExecutionContext, vault: VaultResource) -> MaterializeResult:
    def drop(name: str, settings: Settings) -> KeptDatabasesResult:
        targets = [
            url for url in (settings.staging_database_url, settings.database_url) if url is not None
        ]
        result = drop_expired_kept_databases(
            Vault.from_settings(settings), targets, settings.restore_keep_previous_hours, now=utcnow
        )
        for line in result.skipped:
            context.log.warning(f"{name}: left for next week: {line}")
        return result

    outcome = for_each_database(context, vault, drop)
    rows = [
        _kept_row(name, outcome.done.get(name), outcome.failed.get(name)) for name in outcome.order
    ]
    done = outcome.done.values()
    return _finish(
        outcome,
        "dropping kept databases",
        {
            "databases": _table(KEPT_COLUMNS, rows),
            "dropped_count": MetadataValue.int(sum(len(r.dropped) for r in done)),
            "dropped": MetadataValue.json([kept.to_dict() for r in done for kept in r.dropped]),
            "kept": MetadataValue.json([kept.to_dict() for r in done for kept in r.kept]),
        },
    )


fleet_maintenance_job = define_asset_job(
    "fleet_maintenance_job",
    selection=AssetSelection.assets(
        FLEET_RETENTION_KEY, FLEET_REPORT_KEY, FLEET_KEPT_DATABASES_KEY
    ),
    description=(
        "Every database's retention, then the fleet's weekly report; drop the databases "
        "restores kept beyond RESTORE_KEEP_PREVIOUS_HOURS."
    ),
)

fleet_maintenance_schedule = ScheduleDefinition(
    name="fleet_maintenance_schedule",
    job=fleet_maintenance_job,
    cron_schedule="0 3 * * 1",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Monday 03:00 UTC, as the operations manual schedules cleanup and the report.",
)

# Merged into the code location only with a fleet file (definitions.py). The assets read the
# fleet when they run, so they declare no dependency on hundreds of backup assets: the graph
# stays readable, and a database added to the file is maintained from its first Monday.
defs = Definitions(
    assets=[fleet_retention_state, fleet_weekly_health_report, fleet_kept_databases],
    jobs=[fleet_maintenance_job],
    schedules=[fleet_maintenance_schedule],
)
