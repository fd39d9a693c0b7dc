"""Monday 03:00 UTC: retention, the weekly health report, and the databases restores kept.

Retention and the report are derived from the backups, so they are assets downstream of them:
the UI shows what was kept, deleted and repaired, and the report, beside the backups they
describe. The databases restores and rollbacks kept beside their targets are dropped once
older than RESTORE_KEEP_PREVIOUS_HOURS, so a few restores never fill a server's disk.
"""

from datetime import timedelta

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

from pgvault_assets.defs.history import failed_backup_runs
from pgvault_assets.defs.naming import BACKUP_KEY
from pgvault_assets.defs.resources import VaultResource
from pgvault_assets.engine.cleanup import run_cleanup
from pgvault_assets.engine.clock import utcnow
from pgvault_assets.engine.kept_databases import drop_expired_kept_databases
from pgvault_assets.engine.report import health_figures, render_weekly_report
from pgvault_assets.errors import PgvaultError

RETENTION_KEY = AssetKey("retention_state")
REPORT_KEY = AssetKey("weekly_health_report")
KEPT_DATABASES_KEY = AssetKey("kept_databases")


@asset(
    key=RETENTION_KEY,
    deps=[BACKUP_KEY],
    group_name="backups",
    description=(
        "Backups tiered by the manual's policy (daily 30 days, Sunday 90, 1st of month 365); "
        "expired ones deleted with every version, never below 7 backups, never while stale; "
        "what interrupted runs left in the store (orphaned objects, unfinished uploads) removed."
    ),
)
def retention_state(context: AssetExecutionContext, vault: VaultResource) -> MaterializeResult:
    try:
        settings = vault.settings()
        result = run_cleanup(vault.vault(settings), settings.retention, now=utcnow())
    except PgvaultError as exc:  # one line in the UI, not a traceback
        raise Failure(description=str(exc)) from None
    plan = result.plan
    if plan.blocked_reason:
        context.log.warning(plan.blocked_reason)
    for line in result.repair_lines():
        context.log.info(f"repaired: {line}")
    for line in result.kept_leftovers:
        context.log.warning(line)
    return MaterializeResult(
        metadata={
            **{f"kept_{tier}": MetadataValue.int(n) for tier, n in plan.kept_per_tier.items()},
            "kept_total": MetadataValue.int(len(plan.keep)),
            "deleted_count": MetadataValue.int(len(result.deleted_backups)),
            "deleted_keys": MetadataValue.json(list(result.deleted_keys)),
            "storage_used_bytes": MetadataValue.int(plan.storage_kept_bytes),
            "blocked_reason": plan.blocked_reason or "",
            "repaired": MetadataValue.json([repair.to_dict() for repair in result.repairs]),
            "repaired_count": MetadataValue.int(result.repaired_count),
            "leftovers_kept": MetadataValue.json(list(result.kept_leftovers)),
        }
    )


@asset(
    key=KEPT_DATABASES_KEY,
    group_name="backups",
    description=(
        "The databases restores (`<db>_pre_restore_<time>`) and rollbacks "
        "(`<db>_rolled_back_<time>`) kept beside staging and production: each is dropped once "
        "older than RESTORE_KEEP_PREVIOUS_HOURS by the time in its name, audited; newer ones stay."
    ),
)
def kept_databases(context: AssetExecutionContext, vault: VaultResource) -> MaterializeResult:
    try:
        settings = vault.settings()
        targets = [
            url for url in (settings.staging_database_url, settings.database_url) if url is not None
        ]
        result = drop_expired_kept_databases(
            vault.vault(settings), targets, settings.restore_keep_previous_hours, now=utcnow
        )
    except PgvaultError as exc:  # one line in the UI, not a traceback
        raise Failure(description=str(exc)) from None
    for line in result.skipped:
        context.log.warning(f"left for next week: {line}")
    return MaterializeResult(
        metadata={
            "keep_previous_hours": MetadataValue.int(settings.restore_keep_previous_hours),
            "dropped_count": MetadataValue.int(len(result.dropped)),
            "dropped": MetadataValue.json([kept.to_dict() for kept in result.dropped]),
            "kept": MetadataValue.json([kept.to_dict() for kept in result.kept]),
            "skipped": MetadataValue.json(list(result.skipped)),
        }
    )


@asset(
    key=REPORT_KEY,
    deps=[RETENTION_KEY],
    group_name="backups",
    description="The manual's weekly health report: the week and 30 days, copied to the store.",
)
def weekly_health_report(context: AssetExecutionContext, vault: VaultResource) -> MaterializeResult:
    settings = vault.settings()
    store = vault.vault(settings)
    now = utcnow()
    today = now.date()
    manifests = store.list_manifests()
    failures = failed_backup_runs(
        context.instance,
        BACKUP_KEY,
        now - timedelta(days=31),
        environment=settings.environment,
        database=None,
    )
    week = health_figures(manifests, failures, today=today, window_days=7)
    month = health_figures(manifests, failures, today=today, window_days=30)
    text = render_weekly_report(settings.environment, week, month, generated_at=now)
    key = f"{settings.environment}/reports/{today.isoformat()}-health.md"
    store.store.put_bytes(key, text.encode())
    recent = [m for m in manifests if (today - m.date).days <= 30]
    return MaterializeResult(
        metadata={
            "report": MetadataValue.md(text),
            "report_location": MetadataValue.path(f"{store.store.location}/{key}"),
            "backups_created_7_days": MetadataValue.int(week.backups_created),
            "failed_runs_7_days": MetadataValue.int(week.failure_count),
            "success_rate_30_days": MetadataValue.float(
                round(month.success_rate * 100, 2) if month.success_rate is not None else 0.0
            ),
            "storage_used_bytes": MetadataValue.int(month.storage_used_bytes),
            "daily_size_and_duration": MetadataValue.table(
                records=[
                    TableRecord(
                        {
                            "date": m.date.isoformat(),
                            "size_bytes": m.size_bytes,
                            "duration_seconds": round(m.duration_seconds, 3),
                        }
                    )
                    for m in recent
                ],
                schema=TableSchema(
                    columns=[
                        TableColumn("date", "string"),
                        TableColumn("size_bytes", "int"),
                        TableColumn("duration_seconds", "float"),
                    ]
                ),
            ),
        }
    )


weekly_maintenance_job = define_asset_job(
    "weekly_maintenance_job",
    selection=AssetSelection.assets(RETENTION_KEY, REPORT_KEY, KEPT_DATABASES_KEY),
    description=(
        "Apply retention, then write the weekly health report; drop the databases restores "
        "kept beyond RESTORE_KEEP_PREVIOUS_HOURS."
    ),
)

weekly_maintenance_schedule = ScheduleDefinition(
    name="weekly_maintenance_schedule",
    job=weekly_maintenance_job,
    cron_schedule="0 3 * * 1",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Monday 03:00 UTC, as the operations manual schedules cleanup and the report.",
)

defs = Definitions(
    assets=[retention_state, weekly_health_report, kept_databases],
    jobs=[weekly_maintenance_job],
    schedules=[weekly_maintenance_schedule],
)
