"""The fleet on Dagster: one backup asset per database, one run per database per day.

One asset per database (not a database x day partitioned asset) because a pool belongs to an
asset: each backup is in its server's pool, `pgvault/server/<server>`, whose limit
(`pgvault fleet apply-limits`) caps the dumps a server bears at once, whether a schedule, a
backfill or the UI started them. The schedules request one run per database per day (one run
of every database would hold a server's slots for the length of the slowest dump), keyed
`<database>|<day>` so a tick evaluated twice starts nothing twice.
"""

import os
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckKey,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetsDefinition,
    AssetSelection,
    DefaultScheduleStatus,
    Definitions,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    asset_check,
    define_asset_job,
    in_process_executor,
)

from pgvault_assets.defs.backup import (
    BACKUP_PARTITIONS,
    CONFIG,
    DECRYPTS_FULLY,
    RESTORABLE,
    canceled_on_interrupt,
    decrypts_fully_result,
    fleet_backup_key,
    make_database_backup,
)
from pgvault_assets.defs.history import DATABASE_TAG, ENVIRONMENT_TAG
from pgvault_assets.defs.resources import VaultResource
from pgvault_assets.defs.restorable import RESTORABLE_DESCRIPTION, restorable_result
from pgvault_assets.engine.clock import latest_complete_day
from pgvault_assets.engine.fleet import RESTORE_PROOF_POOL, Fleet, FleetDatabase, load_fleet
from pgvault_assets.errors import PgvaultError
from pgvault_assets.settings import PlatformSettings, environment_name

FLEET_JOB_NAME = "fleet_backup_job"
FLEET_CHECKS_JOB_NAME = "fleet_backup_checks_job"
SERVER_TAG = "pgvault/server"
MAX_RUNTIME_TAG = "dagster/max_runtime"  # run monitoring fails a run older than this


def daily_cron(hour: int) -> str:
    return f"0 {hour} * * *"


def schedule_name(hour: int) -> str:
    return f"fleet_backup_schedule_{hour:02d}"


def run_tags(database: FleetDatabase) -> dict[str, str]:
    """What a run carries: whose backup it is, how long it may take, how big its worker is."""
    size = database.run_size.tags() if database.run_size else {}
    tags = {**database.run_tags, **size, DATABASE_TAG: database.name, SERVER_TAG: database.server}
    if database.max_runtime_seconds is not None:
        tags[MAX_RUNTIME_TAG] = str(database.max_runtime_seconds)
    return tags


def fleet_run_requests(
    databases: Sequence[FleetDatabase], scheduled: datetime, environment: str
) -> list[RunRequest]:
    """One run per database for the latest day complete at the tick's scheduled time."""
    day = latest_complete_day(scheduled).isoformat()
    return [
        RunRequest(
            run_key=f"{database.name}|{day}",
            partition_key=day,
            asset_selection=[fleet_backup_key(database.name)],
            tags={**run_tags(database), ENVIRONMENT_TAG: environment},
        )
        for database in databases
    ]


def _requests_for(
    due: tuple[FleetDatabase, ...],
) -> Callable[[ScheduleEvaluationContext], Iterator[RunRequest]]:
    def evaluate(context: ScheduleEvaluationContext) -> Iterator[RunRequest]:
        yield from fleet_run_requests(
            due, context.scheduled_execution_time, environment_name(os.environ)
        )

    return evaluate


def make_decrypts_fully(database: FleetDatabase) -> AssetChecksDefinition:
    """The database's full decrypt check, run by its scheduled run after the backup."""

    @asset_check(
        asset=fleet_backup_key(database.name),
        name=DECRYPTS_FULLY,
        partitions_def=BACKUP_PARTITIONS,
        description="the whole backup decrypts and authenticates with its key and context",
    )
    def decrypts_fully(
        context: AssetCheckExecutionContext, vault: VaultResource
    ) -> AssetCheckResult:
        try:
            pinned = vault.vault(vault.settings(database.name))
        except PgvaultError as exc:
            return AssetCheckResult(
                passed=False, severity=AssetCheckSeverity.ERROR, description=str(exc)
            )
        with canceled_on_interrupt(context):
            return decrypts_fully_result(pinned, date.fromisoformat(context.partition_key))

    return decrypts_fully


def make_restorable(database: FleetDatabase) -> AssetChecksDefinition:
    """The database's restore proof, run by its scheduled run after the backup; daily or
    weekly as its `restore_proof` says, one proof at a time across the fleet."""

    @asset_check(
        asset=fleet_backup_key(database.name),
        name=RESTORABLE,
        partitions_def=BACKUP_PARTITIONS,
        pool=RESTORE_PROOF_POOL,
        description=RESTORABLE_DESCRIPTION,
    )
    def restorable(context: AssetCheckExecutionContext, vault: VaultResource) -> AssetCheckResult:
        try:
            settings = vault.settings(database.name)
        except PgvaultError as exc:
            return AssetCheckResult(
                passed=False, severity=AssetCheckSeverity.WARN, description=str(exc)
            )
        with canceled_on_interrupt(context):
            return restorable_result(
                settings, vault.vault(settings), date.fromisoformat(context.partition_key)
            )

    return restorable


def stored_backup_checks(fleet: Fleet) -> list[AssetChecksDefinition]:
    """Each database's checks that read its stored backup (not the run's dump)."""
    return [
        check
        for database in fleet.databases
        for check in (make_decrypts_fully(database), make_restorable(database))
    ]


def fleet_definitions(
    fleet: Fleet,
    config: PlatformSettings = CONFIG,
    cron_for_hour: Callable[[int], str] = daily_cron,
) -> Definitions:
    """The fleet's assets, their job and a schedule per backup hour (`schedule_hour`)."""
    assets = [make_database_backup(config, database) for database in fleet.databases]
    job = define_asset_job(
        FLEET_JOB_NAME,
        selection=AssetSelection.assets(*(fleet_backup_key(d.name) for d in fleet.databases)),
        partitions_def=BACKUP_PARTITIONS,
        # One step per run: running it in the run worker saves a process per backup.
        executor_def=in_process_executor,
        description="Back up one database's day; its schedule starts one run per database.",
    )
    schedules = []
    for hour in sorted({database.schedule_hour for database in fleet.databases}):
        due = tuple(database for database in fleet.databases if database.schedule_hour == hour)
        schedules.append(
            ScheduleDefinition(
                name=schedule_name(hour),
                cron_schedule=cron_for_hour(hour),
                execution_timezone="UTC",
                job=job,
                execution_fn=_requests_for(due),
                default_status=DefaultScheduleStatus.RUNNING,
                description=f"{hour:02d}:00 UTC: one backup run per database due at this hour.",
            )
        )
    checks_job = define_asset_job(
        FLEET_CHECKS_JOB_NAME,
        selection=AssetSelection.checks(
            *(
                AssetCheckKey(fleet_backup_key(database.name), name)
                for database in fleet.databases
                for name in (DECRYPTS_FULLY, RESTORABLE)
            )
        ),
        partitions_def=BACKUP_PARTITIONS,
        description=(
            "Re-run every database's stored-backup checks on existing partitions; backfill it "
            "over past days."
        ),
    )
    return Definitions(
        assets=assets,
        asset_checks=stored_backup_checks(fleet),
        jobs=[job, checks_job],
        schedules=schedules,
    )


def backup_asset(fleet: Fleet, name: str, config: PlatformSettings = CONFIG) -> AssetsDefinition:
    """The backup asset of the fleet database `name` (for `pgvault backup --database`)."""
    return make_database_backup(config, fleet.choose(name))


FLEET = load_fleet(CONFIG.fleet_file)
# None without a fleet file: the definitions are then the single database's, as they were.
defs = fleet_definitions(FLEET) if FLEET.from_file else None
