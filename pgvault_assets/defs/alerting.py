"""Sensors that turn backup trouble into alerts: staleness, failed runs, failed checks, health.

Each watches something a different Dagster mechanism would miss: a run-failure sensor
limited to named jobs misses UI launches and backfills, so it watches every run and keeps the
backup asset's; a failed warning check leaves its run successful, so checks get their own
sensor over evaluation records; and staleness is measured from the newest backup's own
finish time, because a schedule that never fires produces no event at all.
"""

import json
from datetime import datetime, timedelta
from typing import NamedTuple

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSeverity,
    DagsterInstance,
    DefaultSensorStatus,
    Definitions,
    RunFailureSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

# Private: used by failed_check_evaluations() only, which says why.
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from pgvault_assets.alerts import Alert
from pgvault_assets.defs.backup import (
    CHECKSUM_MATCHES,
    DECRYPTS_FULLY,
    DURATION_WITHIN_AVERAGE,
    RESTORABLE,
    SIZE_NOT_SHRUNK,
)
from pgvault_assets.defs.history import (
    failed_backup_runs,
    failure_reason,
    is_backup_run,
    of_another_environment,
)
from pgvault_assets.defs.naming import BACKUP_KEY
from pgvault_assets.defs.resources import AlertsResource, VaultResource
from pgvault_assets.engine.clock import Clock, utcnow
from pgvault_assets.engine.report import health_figures, health_warnings

STALE_AFTER = timedelta(hours=36)
BACKUP_CHECK_NAMES = (
    CHECKSUM_MATCHES,
    DECRYPTS_FULLY,
    DURATION_WITHIN_AVERAGE,
    SIZE_NOT_SHRUNK,
    RESTORABLE,
)
CURSOR_IDS_KEPT = 1000
STALE = "stale"
FRESH = "fresh"


def staleness_step(
    newest_finished_at: datetime | None,
    cursor: str | None,
    now: datetime,
    schedule: str = "daily_backup_schedule",
) -> tuple[Alert | None, str]:
    """One tick of the stale-episode state machine: alert on entering, notice on leaving;
    `schedule` is the one to look at."""
    if newest_finished_at is None or now - newest_finished_at > STALE_AFTER:
        if cursor == STALE:
            return None, STALE
        since = (
            f"the newest finished {newest_finished_at:%Y-%m-%d %H:%M} UTC, "
            f"{(now - newest_finished_at).total_seconds() / 3600:.0f} h ago"
            if newest_finished_at
            else "there is no backup at all"
        )
        return (
            Alert(
                "backup_stale",
                "fatal",
                f"no backup has succeeded for more than 36 h ({since}); "
                f"check the {schedule} and the last backup run",
            ),
            STALE,
        )
    if cursor == STALE:
        return (
            Alert(
                "backup_stale_resolved",
                "info",
                f"backups resumed: the newest finished {newest_finished_at:%Y-%m-%d %H:%M} UTC",
                resolves=("backup_stale",),
            ),
            FRESH,
        )
    return None, FRESH


def make_staleness_sensor(clock: Clock = utcnow) -> SensorDefinition:
    @sensor(
        name="backup_staleness_sensor",
        minimum_interval_seconds=600,
        default_status=DefaultSensorStatus.RUNNING,
        description="Critical alert when no backup has succeeded for 36 h; resolved notice after.",
    )
    def backup_staleness_sensor(
        context: SensorEvaluationContext, vault: VaultResource, alerts: AlertsResource
    ) -> SkipReason:
        manifests = vault.vault().list_manifests()
        newest = max((m.finished_at for m in manifests), default=None)
        alert, cursor = staleness_step(newest, context.cursor, clock())
        if alert is not None:
            alerts.notifier(vault.settings()).send(alert)
        context.update_cursor(cursor)
        return SkipReason(alert.message if alert else f"backups are {cursor}")

    return backup_staleness_sensor


@run_failure_sensor(
    name="backup_failure_alert_sensor",
    monitor_all_code_locations=True,
    default_status=DefaultSensorStatus.RUNNING,
    description="Critical alert for a backup run that failed after all its retries.",
)
def backup_failure_alert_sensor(
    context: RunFailureSensorContext, vault: VaultResource, alerts: AlertsResource
) -> None:
    run = context.dagster_run
    if not is_backup_run(context.instance, run, BACKUP_KEY):
        return
    settings = vault.settings()
    if of_another_environment(run, settings.environment):
        return
    reason = failure_reason(context.instance, run.run_id)
    if reason is None:  # a refused backfill: nothing was attempted, nothing is broken
        return
    partition = run.tags.get("dagster/partition", "?")
    alerts.notifier(settings).send(failed_run_alert(reason, partition, run.run_id))


def failed_run_alert(reason: str, day: str, run_id: str) -> Alert:
    """A backup run that failed after all its retries, for the single database or a fleet's."""
    return Alert(
        "upload_failing" if reason.startswith("S3 ") else "backup_failed",
        "fatal",
        f"backup of {day} failed after all retries: {reason}",
        {"partition": day, "run_id": run_id},
    )


def failed_check_alert(evaluation: AssetCheckEvaluation, day: str) -> Alert | None:
    """A failed check as an alert: critical for an ERROR check, a warning for a WARN one,
    except a failed restore proof, which pages: the backup may not restore."""
    if evaluation.passed:
        return None
    name = evaluation.check_name
    critical = evaluation.severity == AssetCheckSeverity.ERROR
    return Alert(
        "checksum_mismatch" if name == CHECKSUM_MATCHES else name,
        "fatal" if critical else "error" if name == RESTORABLE else "warning",
        f"check {name} failed for the backup of {day}: "
        f"{evaluation.description or 'see the check in Dagster'}",
        {"partition": day, "check": name},
    )


def check_alert(evaluation: AssetCheckEvaluation) -> Alert | None:
    if evaluation.asset_key != BACKUP_KEY:
        return None
    return failed_check_alert(evaluation, evaluation.partition or "?")


class FailedCheck(NamedTuple):
    """One failed execution of a check: its record id, when it was planned, its evaluation."""

    id: int
    created_at: float
    evaluation: AssetCheckEvaluation | None


def failed_check_evaluations(
    instance: DagsterInstance, check_key: AssetCheckKey, limit: int
) -> list[FailedCheck]:
    """The newest `limit` executions of `check_key` whose evaluation failed.

    pgvault's one private Dagster use. Dagster 1.13 has no public way to read a check's
    evaluations across runs: `DagsterInstance.fetch_materializations` and `fetch_observations`
    cover assets only, and `get_event_records` is deprecated (removed in 2.0) and cannot
    select evaluations by check or outcome. So this reads the event log storage's
    check-execution history, as Dagster's own UI does, and hands back public types only. Its
    ids are the ids the sensor's cursor has always held, so existing cursors keep working.
    """
    records = instance.event_log_storage.get_asset_check_execution_history(
        check_key, limit=limit, status={AssetCheckExecutionRecordStatus.FAILED}
    )
    failed = []
    for record in records:
        event = record.event.dagster_event if record.event else None
        evaluation = event.event_specific_data if event else None
        failed.append(
            FailedCheck(
                record.id,
                record.create_timestamp,
                evaluation if isinstance(evaluation, AssetCheckEvaluation) else None,
            )
        )
    return failed


@sensor(
    name="backup_check_alert_sensor",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Alerts for failed backup checks, including warnings that leave their run green.",
)
def backup_check_alert_sensor(
    context: SensorEvaluationContext, vault: VaultResource, alerts: AlertsResource
) -> SkipReason:
    """The cursor holds the ids of the evaluation records already alerted.

    Ids are assigned when a check is planned, not when it finishes, so a slow check (a
    restore) can finish after a faster, later one: a high-water mark would skip it.
    """
    alerted: list[int] = json.loads(context.cursor) if context.cursor else []
    first_tick = context.cursor is None
    seen = set(alerted)
    not_before = utcnow().timestamp() - 86400
    notifier = None
    for name in BACKUP_CHECK_NAMES:
        failed = failed_check_evaluations(context.instance, AssetCheckKey(BACKUP_KEY, name), 50)
        for record in sorted(failed, key=lambda r: r.id):
            if record.id in seen or (first_tick and record.created_at < not_before):
                continue
            alert = check_alert(record.evaluation) if record.evaluation is not None else None
            if alert is not None:
                notifier = notifier or alerts.notifier(vault.settings())
                notifier.send(alert)
            alerted.append(record.id)
            seen.add(record.id)
    context.update_cursor(json.dumps(alerted[-CURSOR_IDS_KEPT:]))
    return SkipReason(f"{len(alerted)} failed check evaluations alerted so far")


def make_health_sensor(clock: Clock = utcnow) -> SensorDefinition:
    @sensor(
        name="backup_health_sensor",
        minimum_interval_seconds=3600,
        default_status=DefaultSensorStatus.RUNNING,
        description="Warnings for a 30-day success rate under 95% and storage over budget.",
    )
    def backup_health_sensor(
        context: SensorEvaluationContext, vault: VaultResource, alerts: AlertsResource
    ) -> SkipReason:
        settings = vault.settings()
        now = clock()
        failures = failed_backup_runs(
            context.instance,
            BACKUP_KEY,
            now - timedelta(days=31),
            environment=settings.environment,
            database=None,
        )
        figures = health_figures(vault.vault().list_manifests(), failures, today=now.date())
        active = health_warnings(figures, storage_budget_bytes=settings.storage_budget_bytes)
        already = set(json.loads(context.cursor)) if context.cursor else set()
        notifier = alerts.notifier(settings)
        for kind, message in active:
            if kind not in already:
                notifier.send(Alert(kind, "warning", message))
        context.update_cursor(json.dumps(sorted(kind for kind, _ in active)))
        return SkipReason(", ".join(kind for kind, _ in active) or "healthy")

    return backup_health_sensor


@sensor(
    name="backup_record_sensor",
    minimum_interval_seconds=600,
    default_status=DefaultSensorStatus.RUNNING,
    description="Warning for each backup whose manifest cannot be read (damaged or newer).",
)
def backup_record_sensor(
    context: SensorEvaluationContext, vault: VaultResource, alerts: AlertsResource
) -> SkipReason:
    """One alert per unreadable manifest, naming its date and why; the cursor holds the keys
    alerted, so a record that is repaired and breaks again is alerted again."""
    settings = vault.settings()
    _, unreadable = vault.vault(settings).scan_manifests()
    already = set(json.loads(context.cursor)) if context.cursor else set()
    notifier = None
    for record in unreadable:
        if record.key not in already:
            notifier = notifier or alerts.notifier(settings)
            notifier.send(
                Alert(
                    "manifest_unreadable",
                    "warning",
                    f"the backup of {record.day.isoformat()} is skipped, its manifest cannot "
                    f"be read: {record.reason}",
                    tags={"date": record.day.isoformat()},
                )
            )
    context.update_cursor(json.dumps(sorted(record.key for record in unreadable)))
    return SkipReason(f"{len(unreadable)} unreadable manifests" if unreadable else "all readable")


defs = Definitions(
    sensors=[
        make_staleness_sensor(),
        backup_record_sensor,
        backup_failure_alert_sensor,
        backup_check_alert_sensor,
        make_health_sensor(),
    ]
)
