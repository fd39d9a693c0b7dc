"""The daily backup as a partitioned asset, its checks, its job and its 02:00 UTC schedule.

Partition D is the backup of day D, taken the morning after. Only the latest complete day
can be dumped (a dump taken later would hold later data under D's name), so materializing an
older partition fails at once without touching the database; backfills re-run the checks.
"""

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSelection,
    Backoff,
    DailyPartitionsDefinition,
    DefaultScheduleStatus,
    Definitions,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    RetryPolicy,
    RunRequest,
    ScheduleEvaluationContext,
    asset,
    asset_check,
    define_asset_job,
    schedule,
)

from pgvault_assets.alerts import BACKUP_CRON, CheckinStatus, Notifier
from pgvault_assets.defs.history import REFUSED_METADATA_KEY, backup_run_tags
from pgvault_assets.defs.resources import AlertsResource, VaultResource
from pgvault_assets.engine.backup import backup_database, check_backup_date
from pgvault_assets.engine.catalog import first_backup_day
from pgvault_assets.engine.clock import latest_complete_day, utcnow
from pgvault_assets.engine.fleet import FleetDatabase, pool_name
from pgvault_assets.engine.interrupts import Interrupted, signals_interrupt
from pgvault_assets.engine.manifest import Manifest
from pgvault_assets.engine.report import duration_exceeds_average, size_shrank
from pgvault_assets.engine.restore import verify_backup
from pgvault_assets.engine.run_budget import MAX_RUNTIME_TAG, RunBudget, run_budget
from pgvault_assets.engine.vault import Vault
from pgvault_assets.errors import ConfigError, PgvaultError
from pgvault_assets.settings import (
    PlatformSettings,
    environment_name,
    load_settings,
    platform_section,
)

log = logging.getLogger(__name__)
BACKUP_KEY = AssetKey("database_backup")
BACKUP_POOL = "pgvault_backup"
BACKUP_JOB_NAME = "daily_backup_job"
CONFIG = platform_section()


def partitions_start(config: PlatformSettings, now: datetime) -> date:
    """`BACKUP_START_DATE`, else the environment's first backup, else the day a first backup
    would take (yesterday). Once a backup exists the start stays put, so no run is renumbered;
    a store that cannot be read at load falls back to that day rather than fail the location."""
    if config.start_date is not None:
        return config.start_date
    try:
        first = first_backup_day(load_settings())
    except PgvaultError as exc:
        log.warning("partitions start at the latest complete day: %s", exc)
        first = None
    return first or latest_complete_day(now)


BACKUP_PARTITIONS = DailyPartitionsDefinition(
    start_date=partitions_start(CONFIG, utcnow()).isoformat(), timezone="UTC", end_offset=0
)
CHECKIN_NAMESPACE = uuid.UUID("1b0f6a52-8a2e-4c1e-9a53-5d2f0c4be0a7")
# On the step failure of an interrupted run: the signal that ended it (SIGINT 2, SIGTERM 15).
INTERRUPTED_METADATA_KEY = "interrupted_by_signal"

CHECKSUM_MATCHES = "checksum_matches"
DURATION_WITHIN_AVERAGE = "duration_within_average"
SIZE_NOT_SHRUNK = "size_not_shrunk"
DECRYPTS_FULLY = "decrypts_fully"
RESTORABLE = "restorable"
# A run tagged so backs up its database though the namespace's backups come from another.
ACCEPT_NEW_SOURCE_TAG = "pgvault/accept_new_source"


def backup_metadata(manifest: Manifest, location: str) -> dict[str, object]:
    """Numbers stay numbers, so the UI plots size and duration across partitions."""
    metadata: dict[str, object] = {
        "sha256": manifest.sha256,
        "size_bytes": MetadataValue.int(manifest.size_bytes),
        "dump_size_bytes": MetadataValue.int(manifest.dump_size_bytes),
        "compression_ratio": MetadataValue.float(round(manifest.compression_ratio, 3)),
        "duration_seconds": MetadataValue.float(round(manifest.duration_seconds, 3)),
        "object_location": MetadataValue.path(f"{location}/{manifest.object_key}"),
        "row_total": MetadataValue.int(manifest.row_total),
        "table_count": MetadataValue.int(len(manifest.table_rows)),
        "server_version": manifest.server_version,
        "pg_dump_version": manifest.pg_dump_version,
    }
    if manifest.source is not None:
        metadata["source"] = manifest.source.describe()
    if manifest.replaced:
        replaced = manifest.replaced[-1]
        metadata["replaced_backup_taken_at"] = replaced.finished_at.isoformat()
        metadata["replaced_sha256"] = replaced.sha256
    for stage, seconds in sorted(manifest.stage_seconds.items()):
        metadata[f"{stage}_seconds"] = MetadataValue.float(round(seconds, 3))
    return metadata


def checksum_result(vault: Vault, day: date) -> AssetCheckResult:
    try:
        verified = verify_backup(vault, day, full=False)
    except PgvaultError as exc:
        return AssetCheckResult(
            check_name=CHECKSUM_MATCHES,
            passed=False,
            severity=AssetCheckSeverity.ERROR,
            description=str(exc),
        )
    return AssetCheckResult(
        check_name=CHECKSUM_MATCHES,
        passed=True,
        severity=AssetCheckSeverity.ERROR,
        metadata={"sha256": verified.sha256, "size_bytes": verified.size_bytes},
    )


def duration_result(manifest: Manifest, history: list[Manifest]) -> AssetCheckResult:
    slow, average = duration_exceeds_average(manifest, history)
    metadata: dict[str, object] = {"duration_seconds": round(manifest.duration_seconds, 3)}
    if average is not None:
        metadata["average_30_day_seconds"] = round(average, 3)
    return AssetCheckResult(
        check_name=DURATION_WITHIN_AVERAGE,
        passed=not slow,
        severity=AssetCheckSeverity.WARN,
        metadata=metadata,
        description=(
            f"backup took {manifest.duration_seconds:.1f} s, over twice the 30-day average "
            f"of {average:.1f} s"
            if slow and average is not None
            else None
        ),
    )


def shrink_result(manifest: Manifest, history: list[Manifest]) -> AssetCheckResult:
    shrank, previous = size_shrank(manifest, history)
    metadata: dict[str, object] = {"dump_size_bytes": manifest.dump_size_bytes}
    if previous is not None:
        metadata["previous_dump_size_bytes"] = previous.dump_size_bytes
        metadata["previous_date"] = previous.date.isoformat()
    return AssetCheckResult(
        check_name=SIZE_NOT_SHRUNK,
        passed=not shrank,
        severity=AssetCheckSeverity.WARN,
        metadata=metadata,
        description=(
            f"dump is {manifest.dump_size_bytes} bytes, less than half of {previous.date}'s "
            f"{previous.dump_size_bytes}: a table may have been emptied; keep {previous.date}'s backup"
            if shrank and previous is not None
            else None
        ),
    )


def _checkin_id(run_id: str) -> str:
    """One Sentry check-in per run, whichever retry attempt reports it."""
    return uuid.uuid5(CHECKIN_NAMESPACE, run_id).hex


def fleet_backup_key(database: str) -> AssetKey:
    return AssetKey(["backup", database])


def make_database_backup(
    config: PlatformSettings = CONFIG, database: FleetDatabase | None = None
) -> AssetsDefinition:
    """The backup asset retrying as `config` says; tests build one whose retries come at once.

    The policy and the asset's own last-attempt test read the same `max_retries`, so the
    Sentry check-in is closed as an error only by the attempt Dagster will not retry.
    Without `database`, the asset of `DATABASE_URL`; with one, that fleet database's asset,
    in its server's pool and group.
    """
    key = BACKUP_KEY if database is None else fleet_backup_key(database.name)
    pinned = None if database is None else database.name

    @asset(
        key=key,
        # No backfill_policy: without one, Dagster backfills each partition in its own run,
        # which is what a dump of one day needs.
        partitions_def=BACKUP_PARTITIONS,
        retry_policy=RetryPolicy(
            max_retries=config.max_retries,
            delay=config.retry_delay_seconds,
            backoff=Backoff.EXPONENTIAL,
            jitter=Jitter.PLUS_MINUS,
        ),
        pool=BACKUP_POOL if database is None else pool_name(database.server),
        group_name="backups" if database is None else database.server,
        kinds={"postgres"},
        # Each check carries the asset's partitions (a Dagster preview feature): without them
        # the day's results are recorded under no partition and the day's checks stay pending.
        check_specs=[
            AssetCheckSpec(
                CHECKSUM_MATCHES,
                asset=key,
                partitions_def=BACKUP_PARTITIONS,
                blocking=True,
                description="the stored object's SHA-256 equals its manifest's",
            ),
            AssetCheckSpec(
                DURATION_WITHIN_AVERAGE,
                asset=key,
                partitions_def=BACKUP_PARTITIONS,
                description="the backup took at most twice the 30-day average",
            ),
            AssetCheckSpec(
                SIZE_NOT_SHRUNK,
                asset=key,
                partitions_def=BACKUP_PARTITIONS,
                description="the dump is at least half the previous backup's",
            ),
        ],
        description=(
            "pg_dump of "
            + ("DATABASE_URL" if database is None else f"{database.dbname} on {database.server}")
            + " for the partition's day, compressed, encrypted, stored."
        ),
    )
    def database_backup(
        context: AssetExecutionContext, vault: VaultResource, alerts: AlertsResource
    ) -> MaterializeResult:
        try:
            environment = environment_name(vault.environ())
        except ConfigError as exc:
            raise Failure(description=str(exc), allow_retries=False) from None
        # Runs the UI or a backfill launched carry no tags of ours: the health figures find
        # the run by these.
        context.instance.add_run_tags(context.run_id, backup_run_tags(environment, pinned))
        day = date.fromisoformat(context.partition_key)
        try:
            check_backup_date(day, utcnow())
        except ConfigError as exc:
            raise Failure(
                description=f"{exc}. Backfills of past days re-run the checks, not the dump.",
                metadata={REFUSED_METADATA_KEY: True},
                allow_retries=False,
            ) from None
        try:
            settings = vault.settings(pinned)
            url = settings.require_database()
        except ConfigError as exc:
            raise Failure(description=str(exc), allow_retries=False) from None
        store = vault.vault(settings)
        notifier = alerts.notifier(settings)
        checkin_id = _checkin_id(context.run_id)
        budget = recent_run_budget(lambda: store)
        notifier.checkin("in_progress", check_in_id=checkin_id, **_monitor_times(budget))
        started = time.monotonic()
        try:
            with canceled_on_interrupt(context):
                manifest = backup_database(
                    store,
                    url,
                    day,
                    level=settings.compression_level,
                    role_passwords=settings.role_passwords == "include",
                    lock_wait_seconds=settings.lock_wait_seconds,
                    accept_new_source=context.run.tags.get(ACCEPT_NEW_SOURCE_TAG) == "true",
                )
        except PgvaultError as exc:
            final = isinstance(exc, ConfigError) or context.retry_number >= config.max_retries
            if final:
                _close_checkin(notifier, checkin_id, "error", started, budget)
            raise Failure(description=str(exc), allow_retries=not final) from None
        except Failure:
            # Interrupted (the run ends CANCELED): the check-in stays open, and Sentry hears
            # of a missed backup only if no other run backs the day up in time.
            raise
        except BaseException:
            if context.retry_number >= config.max_retries:
                _close_checkin(notifier, checkin_id, "error", started, budget)
            raise
        if manifest.replaced:
            replaced = manifest.replaced[-1]
            context.log.warning(
                f"this backup of {day.isoformat()} replaces the one taken at "
                f"{replaced.finished_at.isoformat()} (sha256 {replaced.sha256[:12]}…), kept "
                "until retention: pgvault list-backups --versions"
            )
        history = store.list_manifests()
        checksum = checksum_result(store, day)
        _close_checkin(notifier, checkin_id, "ok" if checksum.passed else "error", started, budget)
        return MaterializeResult(
            metadata=backup_metadata(manifest, store.store.location),
            check_results=[
                checksum,
                duration_result(manifest, history),
                shrink_result(manifest, history),
            ],
        )

    return database_backup


database_backup = make_database_backup()


@contextlib.contextmanager
def canceled_on_interrupt(
    context: AssetExecutionContext | AssetCheckExecutionContext | OpExecutionContext,
) -> Iterator[None]:
    """SIGINT or SIGTERM inside (Ctrl-C, a cancel from the UI) ends the step's run as
    CANCELED, never retried, once the engine has undone what it half-did.

    Dagster's own handling of an interrupt retries the step when it has a retry policy, and
    fails the run otherwise: a Ctrl-C would then be a failed backup in the health figures and
    an alert. Marking the run as canceling first makes Dagster end it CANCELED.
    """
    try:
        with signals_interrupt():
            yield
    except Interrupted as exc:
        context.instance.report_run_canceling(context.run, message=str(exc))
        raise Failure(
            description=str(exc),
            metadata={INTERRUPTED_METADATA_KEY: exc.signum},
            allow_retries=False,
        ) from None


def recent_run_budget(open_vault: Callable[[], Vault]) -> RunBudget:
    """The run's time limits from the recent backups; the defaults when the store cannot say,
    since no watcher's margin is worth a backup that does not start."""
    try:
        return run_budget(open_vault().list_manifests())
    except Exception as exc:
        log.warning(
            "recent backup durations unreadable (%s); default run limits apply",
            " ".join(str(exc).split()) or type(exc).__name__,
        )
        return RunBudget()


def _monitor_times(budget: RunBudget) -> dict[str, int]:
    return {
        "checkin_margin_minutes": budget.sentry_checkin_margin_minutes,
        "max_runtime_minutes": budget.sentry_max_runtime_minutes,
    }


def _close_checkin(
    notifier: Notifier, checkin_id: str, status: CheckinStatus, started: float, budget: RunBudget
) -> None:
    notifier.checkin(
        status,
        check_in_id=checkin_id,
        duration_seconds=round(time.monotonic() - started, 3),
        **_monitor_times(budget),
    )


@asset_check(
    asset=BACKUP_KEY,
    name=DECRYPTS_FULLY,
    partitions_def=BACKUP_PARTITIONS,
    description="the whole backup decrypts and authenticates with its key and context",
)
def decrypts_fully(context: AssetCheckExecutionContext, vault: VaultResource) -> AssetCheckResult:
    with canceled_on_interrupt(context):
        return decrypts_fully_result(vault.vault(), date.fromisoformat(context.partition_key))


def decrypts_fully_result(vault: Vault, day: date) -> AssetCheckResult:
    """The whole backup of `day` read, authenticated and checked against its manifest."""
    try:
        verified = verify_backup(vault, day, full=True)
    except PgvaultError as exc:
        return AssetCheckResult(
            passed=False, severity=AssetCheckSeverity.ERROR, description=str(exc)
        )
    return AssetCheckResult(
        passed=True,
        severity=AssetCheckSeverity.ERROR,
        metadata={"dump_size_bytes": verified.dump_size_bytes or 0},
    )


daily_backup_job = define_asset_job(
    BACKUP_JOB_NAME,
    selection=AssetSelection.assets(BACKUP_KEY),
    partitions_def=BACKUP_PARTITIONS,
    description="Back up one day and run every check of its backup.",
)

backup_checks_job = define_asset_job(
    "backup_checks_job",
    selection=AssetSelection.checks(
        AssetCheckKey(BACKUP_KEY, DECRYPTS_FULLY), AssetCheckKey(BACKUP_KEY, RESTORABLE)
    ),
    partitions_def=BACKUP_PARTITIONS,
    description="Re-run the stored-backup checks on existing partitions; backfill it over past days.",
)


@schedule(
    job=daily_backup_job,
    name="daily_backup_schedule",
    cron_schedule=BACKUP_CRON,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description=(
        "02:00 UTC: back up the day that just ended, with a run time limit of three times "
        "the longest of the last 7 backups (at least dagster.yaml's)."
    ),
)
def daily_backup_schedule(context: ScheduleEvaluationContext) -> RunRequest:
    moment = context.scheduled_execution_time or utcnow()
    day = latest_complete_day(moment)
    budget = recent_run_budget(lambda: Vault.from_settings(load_settings()))
    return daily_backup_job.run_request_for_partition(
        partition_key=day.isoformat(),
        run_key=day.isoformat(),
        tags={
            MAX_RUNTIME_TAG: str(budget.max_runtime_seconds),
            **backup_run_tags(environment_name(os.environ), None),
        },
    )


defs = Definitions(
    assets=[database_backup],
    asset_checks=[decrypts_fully],
    jobs=[daily_backup_job, backup_checks_job],
    schedules=[daily_backup_schedule],
)
