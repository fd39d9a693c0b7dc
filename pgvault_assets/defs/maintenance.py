"""Monday 03:00 UTC: retention, the weekly health report, and the databases restores kept.

Retention and the report are derived from the backups, so they are assets downstream of them:
the UI shows what was kept, deleted and repaired, and the report, beside the backups they
describe. The databases restores and rollbacks kept beside their targets are dropped once
older than RESTORE_KEEP_PREVIOUS_HOURS, so a few restores never fill a server's disk.

Each is done database by database, with the settings `--database NAME` would give each (its
namespace, its retention, its servers), read from the fleet when the run starts, so a
database added to the fleet file is maintained from its first Monday. A fleet of hundreds
always has one database in trouble (a server variable not set yet, a store prefix it cannot
read): that one is logged and recorded in its row, the others are still done, and the asset
fails at the end with one line naming each failed database, so the trouble shows in the UI
without costing the rest their week.
"""

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
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

from pgvault_assets.defs.backup import Build
from pgvault_assets.defs.history import failed_runs_by_key
from pgvault_assets.defs.naming import Names, names_of
from pgvault_assets.defs.resources import VaultResource
from pgvault_assets.engine.backup.cleanup import CleanupResult, run_cleanup
from pgvault_assets.engine.basics import names as object_names
from pgvault_assets.engine.basics.clock import utcnow
from pgvault_assets.engine.monitoring.maintenance_figures import (
    KEPT_COLUMNS,
    REPORT_COLUMNS,
    RETENTION_COLUMNS,
    Columns,
    kept_row,
    kept_totals,
    report_row,
    report_totals,
    retention_row,
    retention_totals,
)
from pgvault_assets.engine.monitoring.report import (
    DatabaseHealth,
    FormerDatabase,
    database_health,
    former_database,
    render_fleet_report,
    render_weekly_report,
)
from pgvault_assets.engine.recovery.kept_databases import (
    KeptDatabasesResult,
    drop_expired_kept_databases,
)
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import PgvaultError
from pgvault_assets.fleet import each_database_apart, load_fleet
from pgvault_assets.redact import redact
from pgvault_assets.settings import Settings

T = TypeVar("T")


@dataclass
class EachDatabase(Generic[T]):
    """What one piece of work gave for each database, and why it failed for the others."""

    names: Names
    """The fleet's names as the run found it: each database's `said` prefixes its lines."""
    settings: Settings
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

    def table(
        self, columns: Columns, row: Callable[[str, T | None, str | None], dict[str, Any]]
    ) -> MetadataValue:
        """One row per database: `row(name, what it gave or None, why it failed or None)`."""
        return _table(columns, [row(n, self.done.get(n), self.failed.get(n)) for n in self.order])


def for_each_database(
    context: AssetExecutionContext,
    vault: VaultResource,
    work: Callable[[str, str, Settings], T],
) -> EachDatabase[T]:
    """`work(name, said, settings)` for every database of the fleet, each on its own (`said`
    prefixes the lines it logs); one's failure is logged and recorded, never raised, so it
    cannot stop the others."""
    try:
        settings = vault.settings()
        names = names_of(load_fleet(settings.platform.fleet_file))
        databases = each_database_apart(settings, vault.environ())
    except PgvaultError as exc:  # the fleet file itself: nothing can be done for anyone
        raise Failure(description=str(exc)) from None
    outcome: EachDatabase[T] = EachDatabase(names, settings)
    for name, pinned in databases:
        outcome.order.append(name)
        try:
            if isinstance(pinned, PgvaultError):
                raise pinned
            outcome.done[name] = work(name, names.of(name).said, pinned)
        except PgvaultError as exc:
            outcome.failed[name] = redact(" ".join(str(exc).split()))
        except Exception as exc:  # one database's surprise must not cost the others their week
            # Its message only, redacted: a traceback's frames may hold a server's URL.
            outcome.failed[name] = redact(f"unexpected {type(exc).__name__}: {exc}")
        if name in outcome.failed:
            context.log.error(f"{name}: {outcome.failed[name]}")
    return outcome


def _table(columns: Sequence[tuple[str, str]], rows: list[dict[str, Any]]) -> MetadataValue:
    """One row per database; a cell a failed database has no figure for is empty (None)."""
    return MetadataValue.table(
        records=[TableRecord({name: row.get(name) for name, _ in columns}) for row in rows],
        schema=TableSchema(columns=[TableColumn(name, kind) for name, kind in columns]),
    )


def _finish(outcome: EachDatabase[T], what: str, metadata: dict[str, Any]) -> MaterializeResult:
    metadata = {
        **metadata,
        "databases_done": MetadataValue.int(len(outcome.done)),
        "databases_failed": MetadataValue.json(outcome.failed),
    }
    if outcome.failed:
        raise Failure(description=outcome.failure_line(what), metadata=metadata)
    return MaterializeResult(metadata=metadata)


def retention_state(context: AssetExecutionContext, vault: VaultResource) -> MaterializeResult:
    now = utcnow()
    blocked: list[str] = []

    def clean(name: str, said: str, settings: Settings) -> CleanupResult:
        result = run_cleanup(Vault.from_settings(settings), settings.retention, now=now)
        if result.plan.blocked_reason:
            blocked.append(f"{said}{result.plan.blocked_reason}")
            context.log.warning(blocked[-1])
        for line in result.repair_lines():
            context.log.info(f"{said}repaired: {line}")
        for line in result.kept_leftovers:
            context.log.warning(f"{said}{line}")
        return result

    outcome = for_each_database(context, vault, clean)
    return _finish(
        outcome,
        "retention",
        {
            "databases": outcome.table(RETENTION_COLUMNS, retention_row),
            **retention_totals(outcome.done.values()),
            "blocked_reason": "; ".join(blocked),
        },
    )


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


def _health(outcome: EachDatabase[DatabaseHealth]) -> list[DatabaseHealth]:
    """Each database's figures in the fleet's order, a failed one's saying why."""
    return [
        outcome.done.get(n) or DatabaseHealth(n, error=outcome.failed[n]) for n in outcome.order
    ]


def _report(
    context: AssetExecutionContext, outcome: EachDatabase[DatabaseHealth], now: datetime
) -> tuple[str, str]:
    """The report's text and key: a fleet of one's is its database's own (the manual's, week
    and 30 days side by side); a fleet's one row per database and then what needs attention."""
    settings = outcome.settings
    health = _health(outcome)
    if (
        len(health) == 1
        and health[0].week
        and health[0].month
        and not outcome.names.of(health[0].name).said
    ):
        text = render_weekly_report(
            settings.environment, health[0].week, health[0].month, generated_at=now
        )
        return text, f"{settings.environment}/reports/{now.date().isoformat()}-health.md"
    former = former_databases(context, settings, set(outcome.order))
    text = render_fleet_report(
        settings.environment,
        health,
        generated_at=now,
        storage_budget_bytes=settings.storage_budget_bytes,
        former=former,
    )
    return text, object_names.fleet_report_key(settings.environment, now.date())


def weekly_health_report(context: AssetExecutionContext, vault: VaultResource) -> MaterializeResult:
    now = utcnow()
    today = now.date()
    try:
        settings = vault.settings()
        names = names_of(load_fleet(settings.platform.fleet_file))
    except PgvaultError as exc:
        raise Failure(description=str(exc)) from None
    failures = failed_runs_by_key(
        context.instance, names.backup_keys(), now - timedelta(days=31), settings.environment
    )
    manifests: dict[str, list] = {}

    def figures(name: str, said: str, pinned: Settings) -> DatabaseHealth:
        manifests[name] = Vault.from_settings(pinned).list_manifests()
        return database_health(name, manifests[name], failures[names.of(name).backup], today=today)

    outcome = for_each_database(context, vault, figures)
    text, key = _report(context, outcome, now)
    store = Vault.from_settings(settings).store
    store.put_bytes(key, text.encode())
    recent = [m for ms in manifests.values() for m in ms if (today - m.date).days <= 30]
    return _finish(
        outcome,
        "the weekly report",
        {
            "report": MetadataValue.md(text),
            "report_location": MetadataValue.path(f"{store.location}/{key}"),
            "databases": _table(REPORT_COLUMNS, [report_row(h) for h in _health(outcome)]),
            **report_totals(outcome.done.values()),
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
        },
    )


def kept_databases(context: AssetExecutionContext, vault: VaultResource) -> MaterializeResult:
    skipped: list[str] = []

    def drop(name: str, said: str, settings: Settings) -> KeptDatabasesResult:
        targets = [
            url for url in (settings.staging_database_url, settings.database_url) if url is not None
        ]
        result = drop_expired_kept_databases(
            Vault.from_settings(settings), targets, settings.restore_keep_previous_hours, now=utcnow
        )
        for line in result.skipped:
            skipped.append(f"{said}{line}")
            context.log.warning(f"{said}left for next week: {line}")
        return result

    outcome = for_each_database(context, vault, drop)
    return _finish(
        outcome,
        "dropping kept databases",
        {
            "databases": outcome.table(KEPT_COLUMNS, kept_row),
            "keep_previous_hours": MetadataValue.int(outcome.settings.restore_keep_previous_hours),
            **kept_totals(outcome.done.values()),
            "skipped": MetadataValue.json(skipped),
        },
    )


WORK: dict[str, tuple[Callable[..., MaterializeResult], str]] = {
    "retention_state": (
        retention_state,
        "Each database's backups tiered by its retention (the manual's policy: daily 30 days, "
        "Sunday 90, 1st of month 365; a fleet file's override), expired ones deleted with every "
        "version, never below 7 backups, never while stale; what interrupted runs left in the "
        "store removed. A database that fails is named; the others are done.",
    ),
    "weekly_health_report": (
        weekly_health_report,
        "The manual's weekly health report, the week and 30 days, copied to the store "
        "({environment}/reports/); for a fleet one row per database, then what needs attention.",
    ),
    "kept_databases": (
        kept_databases,
        "The databases restores (`<db>_pre_restore_<time>`) and rollbacks "
        "(`<db>_rolled_back_<time>`) kept beside each database's staging and production: each "
        "dropped once older than RESTORE_KEEP_PREVIOUS_HOURS by the time in its name, audited.",
    ),
}


def maintenance_assets(build: Build) -> list[AssetsDefinition]:
    """The three assets under the build's names, retention downstream of the backups."""
    names = build.names
    retention = names.maintenance_key("retention_state")
    deps = {
        "retention_state": [n.backup for n in names.databases],
        "weekly_health_report": [retention],
        "kept_databases": [],
    }
    return [
        asset(
            key=names.maintenance_key(name),
            deps=deps[name],
            group_name=names.maintenance_group,
            description=description,
        )(compute)
        for name, (compute, description) in WORK.items()
    ]


def maintenance_defs(build: Build) -> Definitions:
    names = build.names
    assets = maintenance_assets(build)
    job = define_asset_job(
        names.maintenance_job,
        selection=AssetSelection.assets(*(a.key for a in assets)),
        description=(
            "Every database's retention, then the weekly report; drop the databases restores "
            "kept beyond RESTORE_KEEP_PREVIOUS_HOURS."
        ),
    )
    schedule = ScheduleDefinition(
        name=names.maintenance_schedule,
        job=job,
        cron_schedule="0 3 * * 1",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description="Monday 03:00 UTC, as the operations manual schedules cleanup and the report.",
    )
    return Definitions(assets=assets, jobs=[job], schedules=[schedule])
