"""The quarterly disaster-recovery drill and restores from the launchpad.

Both are the CLI's `pgvault drill` and `pgvault restore-from-backup` on Dagster: the engine does
the work and keeps the gates (production needs a dual-authorized request here too, and nothing
here can skip it); this layer chooses when, reads the launchpad's config and carries metadata.
"""

from datetime import date
from typing import Literal

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    Config,
    DefaultScheduleStatus,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    asset,
    define_asset_job,
    job,
    op,
    schedule,
)

from pgvault_assets.defs.backup import Build, canceled_on_interrupt
from pgvault_assets.defs.naming import DatabaseNames
from pgvault_assets.defs.resources import AlertsResource, VaultResource
from pgvault_assets.engine.approvals import authorization as auth
from pgvault_assets.engine.recovery.drill import drill_alert, run_configured_drill, store_report
from pgvault_assets.engine.recovery.operations import restore_production, restore_staging
from pgvault_assets.engine.restore.restore import RestoreResult
from pgvault_assets.engine.restore.staging import staging_target
from pgvault_assets.errors import ConfigError, PgvaultError
from pgvault_assets.fleet import RESTORE_PROOF_POOL
from pgvault_assets.settings import DatabaseUrl

RECOVERY_TIME_WITHIN_OBJECTIVE = "recovery_time_within_objective"
DRILL_JOB = "disaster_recovery_drill_job"
MONDAY = 0
QUARTER_MONTHS = (1, 4, 7, 10)


class DrillConfig(Config):
    recovery_time_objective_hours: float | None = None
    """The objective; unset, the manual's 4 hours (as `pgvault drill --rto-hours`)."""


def make_drill(names: DatabaseNames) -> AssetsDefinition:
    """The database's quarterly drill, one at a time across the fleet (the proofs' pool)."""

    @asset(
        key=names.drill,
        deps=[names.backup],
        group_name="recovery",
        pool=RESTORE_PROOF_POOL,
        description=(
            "The manual's quarterly drill: last month's monthly backup restored onto a throwaway "
            "PostgreSQL cluster (or RESTORE_CHECK_DATABASE_URL's server), checked, queried and "
            "timed per stage, then removed; the report is kept in the store."
        ),
        check_specs=[
            AssetCheckSpec(
                RECOVERY_TIME_WITHIN_OBJECTIVE,
                asset=names.drill,
                description=(
                    "the drill passed and its recovery time, scaled to production's size, is "
                    "within the recovery time objective (4 h unless configured)"
                ),
            )
        ],
    )
    def disaster_recovery_drill(
        context: AssetExecutionContext,
        config: DrillConfig,
        vault: VaultResource,
        alerts: AlertsResource,
    ) -> MaterializeResult:
        return drill_result(context, config, vault, alerts, names.pinned)

    return disaster_recovery_drill


def drill_result(
    context: AssetExecutionContext,
    config: DrillConfig,
    vault: VaultResource,
    alerts: AlertsResource,
    pinned: str | None,
) -> MaterializeResult:
    try:
        settings = vault.settings(pinned)
        store = vault.vault(settings)
        with canceled_on_interrupt(context):
            report = run_configured_drill(
                store, settings, rto_hours=config.recovery_time_objective_hours
            )
        key = store_report(store, report)
    except PgvaultError as exc:
        raise Failure(description=str(exc)) from None
    findings = report.findings()
    if not report.passed:
        context.log.error("; ".join(findings))
        alerts.notifier(settings).send(drill_alert(report, context.run_id))
    return MaterializeResult(
        metadata={
            "report": MetadataValue.md(report.to_markdown()),
            "report_key": key,
            "backup_date": report.backup_date.isoformat(),
            "passed": report.passed,
            **{
                f"{stage}_seconds": MetadataValue.float(seconds)
                for stage, seconds in report.stage_seconds.items()
            },
            "measured_seconds": MetadataValue.float(report.measured_seconds),
            "scale": MetadataValue.float(report.scale),
            "scaled_recovery_seconds": MetadataValue.float(report.scaled_seconds),
            "recovery_time_objective_seconds": MetadataValue.float(
                report.recovery_time_objective_seconds
            ),
        },
        check_results=[
            AssetCheckResult(
                check_name=RECOVERY_TIME_WITHIN_OBJECTIVE,
                passed=report.passed,
                severity=AssetCheckSeverity.ERROR,
                description="; ".join(findings),
                metadata={
                    "scaled_recovery_seconds": MetadataValue.float(report.scaled_seconds),
                    "recovery_time_objective_seconds": MetadataValue.float(
                        report.recovery_time_objective_seconds
                    ),
                },
            )
        ],
    )


@schedule(
    # Cron ORs day-of-month with day-of-week, so it cannot say "the first Monday": it ticks on
    # days 1-7 of each quarter's first month and the function keeps the Monday.
    cron_schedule="0 10 1-7 1,4,7,10 *",
    job_name=DRILL_JOB,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="The first Monday of each quarter, 10:00 UTC: every database's drill.",
)
def quarterly_drill_schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
    day = context.scheduled_execution_time.date()
    if not is_first_monday_of_quarter(day):
        return SkipReason(f"{day} is not the first Monday of a quarter")
    return RunRequest(run_key=f"drill-{day}")


def is_first_monday_of_quarter(day: date) -> bool:
    return day.month in QUARTER_MONTHS and day.day <= 7 and day.weekday() == MONDAY


class RestoreConfig(Config):
    date: str
    """The backup to restore, YYYY-MM-DD."""
    target: Literal["staging", "production"] = "staging"
    request_id: str | None = None
    """Production only: the dual-approved request (pgvault request-restore, two approvals)."""
    verify: bool = False
    """Decrypt and hash the whole backup before restoring (as `--verify`)."""
    database: str | None = None
    """With a fleet file, the database whose backup to restore (as `--database`)."""


@op(description="Restore a backup into staging, or into production under an approved request.")
def restore_from_backup(
    context: OpExecutionContext, config: RestoreConfig, vault: VaultResource
) -> None:
    try:
        day = date.fromisoformat(config.date)
    except ValueError:
        raise Failure(description=f"{config.date!r} is not a date; use YYYY-MM-DD") from None
    try:
        with canceled_on_interrupt(context):
            if config.target == "production":
                url, result = _restore_production(vault, day, config)
            else:
                if config.request_id:
                    raise ConfigError("request_id is only for production restores; drop it")
                settings = vault.settings(config.database)
                store = vault.vault(settings)
                url = staging_target(settings, vault.environ())
                result = restore_staging(
                    store,
                    day,
                    url,
                    actor=f"dagster run {context.run_id}",
                    full_verify=config.verify,
                )
    except PgvaultError as exc:
        raise Failure(description=str(exc)) from None
    context.log.info(
        f"restored backup {day} into the {config.target} database {url.dbname}"
        + (f"; the replaced database is kept as {result.previous}" if result.previous else "")
    )
    context.add_output_metadata(
        {
            "backup_date": day.isoformat(),
            "target": config.target,
            "database": url.dbname,
            "row_total": result.manifest.row_total,
            "duration_seconds": MetadataValue.float(round(sum(result.stage_seconds.values()), 3)),
            "previous_database": result.previous or "",
        }
    )


def _restore_production(
    vault: VaultResource, day: date, config: RestoreConfig
) -> tuple[DatabaseUrl, RestoreResult]:
    """Exactly the CLI's checks, without its prompt: the two approvals are the gate."""
    if not config.request_id:
        raise ConfigError(
            "restoring to production needs an approved request: pgvault request-restore --date D "
            "--target production --reason TEXT, two approvals, then request_id: ID"
        )
    settings = vault.settings(config.database)
    store = vault.vault(settings)
    request = auth.read_request(store, config.request_id)
    if request.date != day:
        raise ConfigError(
            f"request {request.id} approved the {request.date} backup, not {day}; nothing was restored"
        )
    url = settings.target_url("production")
    return url, restore_production(
        store,
        config.request_id,
        url,
        settings.recovery.require_approvers_file(),
        full_verify=config.verify,
    )


@job(description="Restore a chosen date from the launchpad; staging by default.")
def restore_job() -> None:
    restore_from_backup()


def recovery_defs(build: Build) -> Definitions:
    """Each database's drill, the quarterly job and schedule that run them all (one at a time:
    the proofs' pool), and the restore job, which restores the database its config names."""
    drills = [make_drill(names) for names in build.names.databases]
    job = define_asset_job(DRILL_JOB, selection=[drill.key for drill in drills])
    return Definitions(assets=drills, jobs=[job, restore_job], schedules=[quarterly_drill_schedule])
