"""Each database's daily backup as a partitioned asset, its checks, its job and its schedule.

Partition D is the backup of day D, taken the morning after. Only the latest complete day
can be dumped (a dump taken later would hold later data under D's name), so materializing an
older partition fails at once without touching the database; backfills re-run the checks.

One asset per database (not a database x day partitioned asset) because a pool belongs to an
asset: each backup is in its pool (a fleet database's server's, `pgvault/server/<server>`,
whose limit `pgvault fleet apply-limits` sets), whether a schedule, a backfill or the UI
started it. A schedule per backup hour requests one run per database due (one run of every
database would hold a server's slots for the length of the slowest dump), each keyed so a
tick evaluated twice starts nothing twice.
"""

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
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
    ScheduleDefinition,
    ScheduleEvaluationContext,
    asset,
    asset_check,
    define_asset_job,
    in_process_executor,
)

from pgvault_assets.alerts import CheckinStatus, Notifier
from pgvault_assets.defs.history import DATABASE_TAG, REFUSED_METADATA_KEY, backup_run_tags
from pgvault_assets.defs.naming import DatabaseNames, Names, names_of
from pgvault_assets.defs.resources import AlertsResource, VaultResource
from pgvault_assets.engine.backup.backup import backup_database, check_backup_date
from pgvault_assets.engine.basics.clock import latest_complete_day, utcnow
from pgvault_assets.engine.basics.interrupts import Interrupted, signals_interrupt
from pgvault_assets.engine.basics.policy import SUNDAY
from pgvault_assets.engine.monitoring.catalog import first_backup_day
from pgvault_assets.engine.monitoring.report import duration_exceeds_average, size_shrank
from pgvault_assets.engine.monitoring.run_budget import MAX_RUNTIME_TAG, RunBudget, run_budget
from pgvault_assets.engine.recovery.restore_check import verify_restorable
from pgvault_assets.engine.restore.verify import verify_backup
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import ConfigError, PgvaultError
from pgvault_assets.fleet import RESTORE_PROOF_POOL, Fleet, FleetDatabase, pin_database
from pgvault_assets.settings import PlatformSettings, Settings, environment_name, load_settings

log = logging.getLogger(__name__)
SERVER_TAG = "pgvault/server"


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


@dataclass(frozen=True)
class Build:
    """What every definition of one build shares: the fleet, the platform settings, the
    names, and the one partitions definition all backups and their checks carry."""

    fleet: Fleet
    config: PlatformSettings
    names: Names
    partitions: DailyPartitionsDefinition

    @classmethod
    def of(cls, fleet: Fleet, config: PlatformSettings) -> "Build":
        start = partitions_start(config, utcnow()).isoformat()
        partitions = DailyPartitionsDefinition(start_date=start, timezone="UTC", end_offset=0)
        return cls(fleet, config, names_of(fleet), partitions)


CHECKIN_NAMESPACE = uuid.UUID("1b0f6a52-8a2e-4c1e-9a53-5d2f0c4be0a7")
# On the step failure of an interrupted run: the signal that ended it (SIGINT 2, SIGTERM 15).
INTERRUPTED_METADATA_KEY = "interrupted_by_signal"

CHECKSUM_MATCHES = "checksum_matches"
DURATION_WITHIN_AVERAGE = "duration_within_average"
SIZE_NOT_SHRUNK = "size_not_shrunk"
DECRYPTS_FULLY = "decrypts_fully"
RESTORABLE = "restorable"
BACKUP_CHECK_NAMES = (
    CHECKSUM_MATCHES,
    DECRYPTS_FULLY,
    DURATION_WITHIN_AVERAGE,
    SIZE_NOT_SHRUNK,
    RESTORABLE,
)
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


def _failed(
    exc: PgvaultError, severity: AssetCheckSeverity, name: str | None = None
) -> AssetCheckResult:
    return AssetCheckResult(check_name=name, passed=False, severity=severity, description=str(exc))


def _verified(vault: Vault, day: date, full: bool, name: str | None = None) -> AssetCheckResult:
    """`day`'s stored object against its manifest, an error unless it matches: its SHA-256 and
    size, or with `full` all of it decrypted and authenticated (and the size it decrypts to)."""
    try:
        verified = verify_backup(vault, day, full=full)
    except PgvaultError as exc:
        return _failed(exc, AssetCheckSeverity.ERROR, name)
    return AssetCheckResult(
        check_name=name,
        passed=True,
        severity=AssetCheckSeverity.ERROR,
        metadata={"dump_size_bytes": verified.dump_size_bytes or 0}
        if full
        else {"sha256": verified.sha256, "size_bytes": verified.size_bytes},
    )


def checksum_result(vault: Vault, day: date) -> AssetCheckResult:
    return _verified(vault, day, full=False, name=CHECKSUM_MATCHES)


def _warning(name: str, problem: str | None, metadata: dict[str, object]) -> AssetCheckResult:
    """A warning check: it passes when there is no `problem` to describe."""
    return AssetCheckResult(
        check_name=name,
        passed=problem is None,
        severity=AssetCheckSeverity.WARN,
        metadata=metadata,
        description=problem,
    )


def duration_result(manifest: Manifest, history: list[Manifest]) -> AssetCheckResult:
    slow, average = duration_exceeds_average(manifest, history)
    metadata: dict[str, object] = {"duration_seconds": round(manifest.duration_seconds, 3)}
    problem = None
    if average is not None:
        metadata["average_30_day_seconds"] = round(average, 3)
        if slow:
            problem = (
                f"backup took {manifest.duration_seconds:.1f} s, over twice the 30-day average "
                f"of {average:.1f} s"
            )
    return _warning(DURATION_WITHIN_AVERAGE, problem, metadata)


def shrink_result(manifest: Manifest, history: list[Manifest]) -> AssetCheckResult:
    shrank, previous = size_shrank(manifest, history)
    metadata: dict[str, object] = {"dump_size_bytes": manifest.dump_size_bytes}
    problem = None
    if previous is not None:
        metadata["previous_dump_size_bytes"] = previous.dump_size_bytes
        metadata["previous_date"] = previous.date.isoformat()
        if shrank:
            problem = (
                f"dump is {manifest.dump_size_bytes} bytes, less than half of {previous.date}'s "
                f"{previous.dump_size_bytes}: a table may have been emptied; "
                f"keep {previous.date}'s backup"
            )
    return _warning(SIZE_NOT_SHRUNK, problem, metadata)


def _checkin_id(run_id: str) -> str:
    """One Sentry check-in per run, whichever retry attempt reports it."""
    return uuid.uuid5(CHECKIN_NAMESPACE, run_id).hex


def make_database_backup(build: Build, names: DatabaseNames) -> AssetsDefinition:
    """`names`' backup asset, retrying as `build.config` says; tests build one whose retries
    come at once.

    The policy and the asset's own last-attempt test read the same `max_retries`, so the
    Sentry check-in is closed as an error only by the attempt Dagster will not retry.
    """
    config = build.config
    key = names.backup
    pinned = names.pinned
    partitions = build.partitions

    @asset(
        key=key,
        # No backfill_policy: without one, Dagster backfills each partition in its own run,
        # which is what a dump of one day needs.
        partitions_def=partitions,
        retry_policy=RetryPolicy(
            max_retries=config.max_retries,
            delay=config.retry_delay_seconds,
            backoff=Backoff.EXPONENTIAL,
            jitter=Jitter.PLUS_MINUS,
        ),
        pool=names.pool,
        group_name=names.group,
        kinds={"postgres"},
        # Each check carries the asset's partitions (a Dagster preview feature): without them
        # the day's results are recorded under no partition and the day's checks stay pending.
        check_specs=[
            AssetCheckSpec(
                CHECKSUM_MATCHES,
                asset=key,
                partitions_def=partitions,
                blocking=True,
                description="the stored object's SHA-256 equals its manifest's",
            ),
            AssetCheckSpec(
                DURATION_WITHIN_AVERAGE,
                asset=key,
                partitions_def=partitions,
                description="the backup took at most twice the 30-day average",
            ),
            AssetCheckSpec(
                SIZE_NOT_SHRUNK,
                asset=key,
                partitions_def=partitions,
                description="the dump is at least half the previous backup's",
            ),
        ],
        description=f"pg_dump of {names.source} for the partition's day, compressed, encrypted, stored.",
    )
    def database_backup(
        context: AssetExecutionContext, vault: VaultResource, alerts: AlertsResource
    ) -> MaterializeResult:
        try:
            environment = environment_name(vault.environ())
        except ConfigError as exc:
            raise Failure(description=str(exc), allow_retries=False) from None
        # Runs the UI or a backfill launched carry no tags of ours: the health figures find
        # the run by these. The CLI's and the schedule's runs have them already (a write less).
        tags = backup_run_tags(environment, pinned)
        if any(context.run.tags.get(name) != value for name, value in tags.items()):
            context.instance.add_run_tags(context.run_id, tags)
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
        # The recent durations set the check-in monitor's margins, Sentry's only: without it,
        # a run does not list and read every manifest in the store before it starts.
        budget = recent_run_budget(lambda: store) if notifier.sentry_enabled else RunBudget()
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


def make_decrypts_fully(build: Build, names: DatabaseNames) -> AssetChecksDefinition:
    """The database's full decrypt check, run by its scheduled run after the backup."""

    @asset_check(
        asset=names.backup,
        name=DECRYPTS_FULLY,
        partitions_def=build.partitions,
        description="the whole backup decrypts and authenticates with its key and context",
    )
    def decrypts_fully(
        context: AssetCheckExecutionContext, vault: VaultResource
    ) -> AssetCheckResult:
        try:
            pinned = vault.vault(vault.settings(names.pinned))
        except PgvaultError as exc:
            return _failed(exc, AssetCheckSeverity.ERROR)
        with canceled_on_interrupt(context):
            return decrypts_fully_result(pinned, date.fromisoformat(context.partition_key))

    return decrypts_fully


def decrypts_fully_result(vault: Vault, day: date) -> AssetCheckResult:
    """The whole backup of `day` read, authenticated and checked against its manifest."""
    return _verified(vault, day, full=True)


RESTORABLE_DESCRIPTION = (
    "restored onto a throwaway PostgreSQL cluster (or RESTORE_CHECK_DATABASE_URL's server), "
    "never the backed-up one; every table's row count equals the manifest's, then dropped"
)


def make_restorable(build: Build, names: DatabaseNames) -> AssetChecksDefinition:
    """The database's restore proof, run by its scheduled run after the backup; daily or
    weekly as its settings say, one proof at a time across the fleet.

    A warning, not a blocker: a backup that fails to restore is still the best copy there is
    until a better one exists, so it stays listed while the alert sends someone to look."""

    @asset_check(
        asset=names.backup,
        name=RESTORABLE,
        partitions_def=build.partitions,
        pool=RESTORE_PROOF_POOL,
        description=RESTORABLE_DESCRIPTION,
    )
    def restorable(context: AssetCheckExecutionContext, vault: VaultResource) -> AssetCheckResult:
        try:
            settings = vault.settings(names.pinned)
        except PgvaultError as exc:
            return _failed(exc, AssetCheckSeverity.WARN)
        with canceled_on_interrupt(context):
            return restorable_result(
                settings, vault.vault(settings), date.fromisoformat(context.partition_key)
            )

    return restorable


def restorable_result(settings: Settings, vault: Vault, day: date) -> AssetCheckResult:
    """The proof of `day`'s backup, or why there is none."""
    if settings.restore_verify_weekly and day.weekday() != SUNDAY:
        return AssetCheckResult(
            passed=True,
            severity=AssetCheckSeverity.WARN,
            description="not restored: a weekly restore proof (RESTORE_VERIFY_SCHEDULE=weekly, "
            "or a fleet file's restore_proof: weekly) proves Sunday backups only",
            metadata={"restore_verified": False},
        )
    server = settings.restore_check_database_url
    try:
        proof = verify_restorable(vault, day, server)
    except PgvaultError as exc:
        return _failed(exc, AssetCheckSeverity.WARN)
    return AssetCheckResult(
        passed=True,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "restore_verified": True,
            "restore_verified_at": proof.verified_at.isoformat(),
            "sha256": proof.sha256,
            "tables": proof.tables,
            "row_total": proof.row_total,
            "duration_seconds": proof.duration_seconds,
            "server": (
                "a throwaway PostgreSQL cluster, removed afterwards"
                if server is None
                else str(server.with_dbname(proof.database))
            ),
        },
    )


def daily_cron(hour: int) -> str:
    return f"0 {hour} * * *"


def run_tags(database: FleetDatabase) -> dict[str, str]:
    """What a run carries: whose backup it is, how long it may take, how big its worker is."""
    size = database.run_size.tags() if database.run_size else {}
    tags = {**database.run_tags, **size, DATABASE_TAG: database.name, SERVER_TAG: database.server}
    if database.max_runtime_seconds is not None:
        tags[MAX_RUNTIME_TAG] = str(database.max_runtime_seconds)
    return tags


def backup_run_request(
    for_partition: Callable[..., RunRequest],
    names: DatabaseNames,
    scheduled: datetime,
    environment: str,
) -> RunRequest:
    """The run backing up `names`' database for the latest day complete at `scheduled`, made
    by the job's `run_request_for_partition` (so it needs no repository to resolve)."""
    day = latest_complete_day(scheduled).isoformat()
    tags = {**run_tags(names.database), **backup_run_tags(environment, names.pinned)}
    if names.derived_runtime and MAX_RUNTIME_TAG not in tags:
        budget = recent_run_budget(
            lambda: Vault.from_settings(pin_database(load_settings(), os.environ, names.pinned))
        )
        tags[MAX_RUNTIME_TAG] = str(budget.max_runtime_seconds)
    return for_partition(
        partition_key=day, run_key=names.run_key(day), asset_selection=[names.backup], tags=tags
    )


def _requests_for(
    for_partition: Callable[..., RunRequest], due: tuple[DatabaseNames, ...]
) -> Callable[[ScheduleEvaluationContext], Iterator[RunRequest]]:
    def evaluate(context: ScheduleEvaluationContext) -> Iterator[RunRequest]:
        moment = context.scheduled_execution_time or utcnow()
        environment = environment_name(os.environ)
        for names in due:
            yield backup_run_request(for_partition, names, moment, environment)

    return evaluate


def backup_defs(build: Build, cron_for_hour: Callable[[int], str] = daily_cron) -> Definitions:
    """Every database's backup asset and checks, the job they run in, the job that re-runs the
    stored-backup checks, and a schedule per backup hour (`schedule_hour`)."""
    names = build.names
    job = define_asset_job(
        names.backup_job,
        selection=AssetSelection.assets(*(n.backup for n in names.databases)),
        partitions_def=build.partitions,
        # One step per run: running it in the run worker saves a process per backup.
        executor_def=in_process_executor,
        description="Back up one database's day and run every check of its backup.",
    )
    schedules = []
    for schedule in dict.fromkeys(n.schedule for n in names.databases):
        due = tuple(n for n in names.databases if n.schedule == schedule)
        hour = due[0].database.schedule_hour
        schedules.append(
            ScheduleDefinition(
                name=schedule,
                cron_schedule=cron_for_hour(hour),
                execution_timezone="UTC",
                job=job,
                execution_fn=_requests_for(job.run_request_for_partition, due),
                default_status=DefaultScheduleStatus.RUNNING,
                description=(
                    f"{hour:02d}:00 UTC: back up the day that just ended, one run per database "
                    "due at this hour, with its run time limit."
                ),
            )
        )
    checks_job = define_asset_job(
        names.checks_job,
        selection=AssetSelection.checks(
            *(
                AssetCheckKey(n.backup, check)
                for n in names.databases
                for check in (DECRYPTS_FULLY, RESTORABLE)
            )
        ),
        partitions_def=build.partitions,
        description=(
            "Re-run the stored-backup checks on existing partitions; backfill it over past days."
        ),
    )
    return Definitions(
        assets=[make_database_backup(build, n) for n in names.databases],
        asset_checks=[
            check
            for n in names.databases
            for check in (make_decrypts_fully(build, n), make_restorable(build, n))
        ],
        jobs=[job, checks_job],
        schedules=schedules,
    )
