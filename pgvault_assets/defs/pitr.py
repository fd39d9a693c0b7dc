"""Point-in-time recovery in Dagster: base backups on their own schedules, the WAL archive
watched every minute.

Nothing here runs until `pgvault pitr init` wrote pgBackRest's configuration: the schedules
and the sensor start stopped when the code location loads without it (the UI shows nothing
running that is not set up), and skip, saying so, if it goes away after they started.
"""

import json
from collections.abc import Callable

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetKey,
    Config,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    Failure,
    MaterializeResult,
    MetadataValue,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    asset,
    asset_check,
    define_asset_job,
)

from pgvault_assets.alerts import Alert
from pgvault_assets.defs.backup import Build
from pgvault_assets.defs.resources import AlertsResource, VaultResource
from pgvault_assets.engine.pitr import BACKUP_KINDS
from pgvault_assets.engine.pitr.archive import pitr_status, take_base_backup, tool_for
from pgvault_assets.engine.pitr.recover import prove_restorable
from pgvault_assets.engine.postgres.cluster import one_proof_at_a_time
from pgvault_assets.errors import ConfigError, PgvaultError
from pgvault_assets.fleet import RESTORE_PROOF_POOL
from pgvault_assets.settings import Settings, load_settings

BASE_BACKUP_KEY = AssetKey("pitr_base_backup")
RESOLVED = "pitr_archive_resolved"


class BaseBackupConfig(Config):
    kind: str = "diff"
    """full (weekly), diff (daily) or incr."""


@asset(
    key=BASE_BACKUP_KEY,
    group_name="pitr",
    description=(
        "A pgBackRest base backup (full weekly, differential daily): with the archived WAL "
        "after it, the start of every point-in-time recovery."
    ),
)
def pitr_base_backup(
    context: AssetExecutionContext, config: BaseBackupConfig, vault: VaultResource
) -> MaterializeResult:
    try:
        backup = take_base_backup(
            vault.settings(), config.kind, annotations={"dagster_run_id": context.run_id}
        )
    except PgvaultError as exc:
        raise Failure(description=str(exc)) from None
    return MaterializeResult(
        metadata={
            "label": backup.label,
            "type": backup.kind,
            "wal_start": backup.wal_start,
            "wal_stop": backup.wal_stop,
            "size_bytes": MetadataValue.int(backup.size_bytes),
            "repository_size_bytes": MetadataValue.int(backup.repository_size_bytes),
            "duration_seconds": MetadataValue.float(
                (backup.stopped_at - backup.started_at).total_seconds()
            ),
        }
    )


@asset_check(
    asset=BASE_BACKUP_KEY,
    name="pitr_restorable",
    pool=RESTORE_PROOF_POOL,
    description=(
        "a base backup chosen at random, restored by pgBackRest into a throwaway cluster and "
        "replayed through the whole archive after it; every table of the database read there. "
        "replay_seconds is the measured RTO of a point-in-time recovery"
    ),
)
def pitr_restorable(vault: VaultResource) -> AssetCheckResult:
    settings = vault.settings()
    try:
        with one_proof_at_a_time():
            proof = prove_restorable(tool_for(settings), settings.require_database())
    except PgvaultError as exc:
        return AssetCheckResult(
            passed=False, severity=AssetCheckSeverity.WARN, description=str(exc)
        )
    return AssetCheckResult(
        passed=True,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "base_backup": proof.base_backup,
            "recovered_to": proof.recovered_to,
            "replay_seconds": MetadataValue.float(proof.replay_seconds),
            "tables": MetadataValue.int(len(proof.table_rows)),
            "row_total": MetadataValue.int(sum(proof.table_rows.values())),
        },
    )


pitr_base_backup_job = define_asset_job(
    "pitr_base_backup_job",
    selection=[BASE_BACKUP_KEY],
    description="One pgBackRest base backup; its type comes from the run config.",
)


def _set_up(settings: Settings) -> bool:
    return settings.pitr.config_file.exists()


def _requests(kind: str) -> Callable[..., RunRequest | SkipReason]:
    def evaluate(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        return _base_backup_request(context.resources.vault, kind)

    return evaluate


def _base_backup_request(vault: VaultResource, kind: str) -> RunRequest | SkipReason:
    if kind not in BACKUP_KINDS:
        raise ConfigError(f"unknown base backup type {kind!r}")
    if not _set_up(vault.settings()):
        return SkipReason("point-in-time recovery is not set up; run pgvault pitr init")
    return RunRequest(
        run_config={"ops": {BASE_BACKUP_KEY.to_python_identifier(): {"config": {"kind": kind}}}},
        tags={"pgvault/base_backup": kind},
    )


def archive_alert_step(
    problems: list[tuple[str, str]], cursor: str | None
) -> tuple[list[Alert], str]:
    """One tick of the archive's episodes: an alert for each problem kind that begins, one
    resolved notice when all have ended, which resolves every kind the episode had (a kind
    that ended while another lasted included). The cursor holds the kinds active now and
    those of the episode; a cursor of the active kinds alone (as before) still reads."""
    active = {kind: message for kind, message in problems}
    saved = json.loads(cursor) if cursor else []
    before = set(saved["active"] if isinstance(saved, dict) else saved)
    episode = set(saved["episode"] if isinstance(saved, dict) else saved) | set(active)
    alerts = [
        Alert(kind, "fatal" if kind != "pitr_no_base_backup" else "warning", message)
        for kind, message in active.items()
        if kind not in before
    ]
    if before and not active:
        alerts.append(
            Alert(
                RESOLVED, "info", "WAL archiving is healthy again", resolves=tuple(sorted(episode))
            )
        )
        episode = set()
    return alerts, json.dumps({"active": sorted(active), "episode": sorted(episode)})


def watch_archive(context: SensorEvaluationContext) -> SkipReason:
    vault: VaultResource = context.resources.vault
    alerts: AlertsResource = context.resources.alerts
    settings = vault.settings()
    if not _set_up(settings):
        return SkipReason("point-in-time recovery is not set up; run pgvault pitr init")
    try:
        problems = pitr_status(settings).problems(settings.pitr.max_lag)
    except PgvaultError as exc:  # the server itself is unreachable: an episode of its own
        problems = [("pitr_status_unreadable", f"the WAL archive's state cannot be read: {exc}")]
    sent, cursor = archive_alert_step(problems, context.cursor)
    if sent:
        notifier = alerts.notifier(settings)
        for alert in sent:
            notifier.send(alert)
    context.update_cursor(cursor)
    return SkipReason("; ".join(message for _, message in problems) or "archiving is healthy")


def pitr_defs(build: Build) -> Definitions:
    """The base backups, their proof, their schedules and the archive sensor; started only
    where `pitr init` has run as the location loads (a bad setting counts as not, and is
    said by the commands that use it).

    pgBackRest archives one server per stanza, set up from `DATABASE_URL`: a fleet file's
    servers have none yet (engine/pitr refuses them), so they get no PITR definitions."""
    if build.fleet.from_file:
        return Definitions()
    try:
        running = _set_up(load_settings())
    except PgvaultError:
        running = False
    status = DefaultScheduleStatus.RUNNING if running else DefaultScheduleStatus.STOPPED
    schedules = [
        ScheduleDefinition(
            name=f"pitr_{kind}_backup_schedule",
            job=pitr_base_backup_job,
            cron_schedule=cron,
            execution_timezone="UTC",
            default_status=status,
            execution_fn=_requests(kind),
            required_resource_keys={"vault"},
            description=description,
        )
        for kind, cron, description in (
            ("full", "30 1 * * 0", "Sunday 01:30 UTC: a full base backup."),
            ("diff", "30 1 * * 1-6", "Monday to Saturday 01:30 UTC: a differential base backup."),
        )
    ]
    sensor = SensorDefinition(
        name="pitr_archive_sensor",
        evaluation_fn=watch_archive,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING if running else DefaultSensorStatus.STOPPED,
        required_resource_keys={"vault", "alerts"},
        description=(
            "Watches the WAL archive (pg_stat_archiver, the .ready backlog, the repository's "
            "segments): alerts once per episode of lag past PITR_MAX_LAG_MINUTES, failing "
            "archiving, or a gap."
        ),
    )
    return Definitions(
        assets=[pitr_base_backup],
        asset_checks=[pitr_restorable],
        jobs=[pitr_base_backup_job],
        schedules=schedules,
        sensors=[sensor],
    )
