"""Alerts from one sensor for every database, the fleet of one included: failed backups,
failed checks, stale backups, health and unreadable records.

Why a plain sensor over `DagsterInstance.fetch_run_status_changes` rather than
`@run_failure_sensor`/`@run_status_sensor`: those keep a cursor of their own, one per status,
and hand over one run at a time, while staleness needs state of ours beside the event position
(each database's newest backup and its episode) and failed warning checks sit in *successful*
runs. So one cursor holds the position in the run-end events (failures and successes) and each
database's state; a tick reads the run-end events after that position, each new run's events
once, and nothing else: no query per asset or check, no store listing. Each database's
manifests are read when it is first seen and in the hourly health pass only. Runs are matched
by the backup asset in their selection, not by job name, so backups launched from the UI, a
backfill or the CLI all count; staleness is measured from the newest backup's own finish time,
because a schedule that never fires produces no event at all.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DefaultSensorStatus,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from pgvault_assets.alerts import Alert, Notifier
from pgvault_assets.defs.backup import CHECKSUM_MATCHES, RESTORABLE
from pgvault_assets.defs.history import (
    PARTITION_TAG,
    backup_keys_of_run,
    failed_runs_by_key,
    failure_reason,
    may_concern,
    of_another_environment,
    run_events,
)
from pgvault_assets.defs.naming import DatabaseNames, names_of
from pgvault_assets.defs.resources import AlertsResource, VaultResource
from pgvault_assets.engine.basics.clock import Clock, utcnow
from pgvault_assets.engine.monitoring.report import (
    FLEET_BACKUPS,
    health_figures,
    health_warnings,
    over_budget,
)
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import PgvaultError
from pgvault_assets.fleet import Fleet
from pgvault_assets.settings import Settings

STALE_AFTER = timedelta(hours=36)
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


RUN_END_EVENTS = (DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_SUCCESS)
RUNS_PER_TICK = 200  # per run-end event type; a longer backlog is read over the next ticks
HEALTH_EVERY = timedelta(hours=1)
HEALTH_WINDOW = timedelta(days=31)
UNREADABLE_KEPT = 100  # per database: the cursor stays bounded by the fleet's size
BACKUP_EVENTS = {
    DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
    DagsterEventType.ASSET_MATERIALIZATION,
    DagsterEventType.ASSET_CHECK_EVALUATION,
}


@dataclass(frozen=True)
class DatabaseState:
    """What the sensor remembers of one database between ticks."""

    newest: datetime | None
    """The newest backup's finish: from its manifests, then from each run that materialized."""
    since: datetime
    """When the sensor first saw the database: one without any backup is stale 36 h later."""
    stale: bool = False
    warnings: tuple[str, ...] = ()
    unreadable: tuple[str, ...] = ()

    def seen_backup(self, finished: datetime) -> DatabaseState:
        newest = finished if self.newest is None else max(self.newest, finished)
        return dataclasses.replace(self, newest=newest)


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class FleetCursor:
    runs: dict[str, str] = field(default_factory=dict)
    """Per run-end event type, the event log position read up to (Dagster's own cursor)."""
    databases: dict[str, DatabaseState] = field(default_factory=dict)
    health_at: datetime | None = None
    over_budget: bool = False
    """The fleet's backups were over BACKUP_STORAGE_BUDGET_BYTES at the last health pass."""

    @classmethod
    def parse(cls, text: str | None) -> FleetCursor:
        """The cursor `dump` wrote; a missing or foreign one starts afresh, as a first tick."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            databases = {
                name: DatabaseState(
                    newest=_time(state["newest"]),
                    since=datetime.fromisoformat(state["since"]),
                    stale=bool(state["stale"]),
                    warnings=tuple(state["warnings"]),
                    unreadable=tuple(state["unreadable"]),
                )
                for name, state in data["databases"].items()
            }
            return cls(
                dict(data["runs"]),
                databases,
                _time(data["health_at"]),
                bool(data.get("over_budget", False)),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls()

    def dump(self) -> str:
        return json.dumps(
            {
                "runs": self.runs,
                "health_at": self.health_at.isoformat() if self.health_at else None,
                "over_budget": self.over_budget,
                "databases": {
                    name: {
                        "newest": state.newest.isoformat() if state.newest else None,
                        "since": state.since.isoformat(),
                        "stale": state.stale,
                        "warnings": list(state.warnings),
                        "unreadable": list(state.unreadable),
                    }
                    for name, state in self.databases.items()
                },
            },
            sort_keys=True,
        )


class Channels:
    """Each database's pinned settings, vault and notifier, made at most once per tick.

    A database whose settings cannot be pinned (its server's variable unset) still gets its
    alerts, through the environment's own settings: its backups fail with the same error."""

    def __init__(
        self,
        vault: VaultResource,
        alerts: AlertsResource,
        databases: Sequence[DatabaseNames] = (),
    ) -> None:
        """`databases`: whom each name pins to and what starts its alerts; another name is a
        fleet database's, its alerts starting with its name."""
        self._names = {names.database.name: names for names in databases}
        self._vault = vault
        self._alerts = alerts
        self._settings: dict[str, Settings | None] = {}
        self._notifiers: dict[str, Notifier] = {}
        self.sent = 0

    def settings(self, name: str) -> Settings | None:
        if name not in self._settings:
            try:
                known = self._names.get(name)
                self._settings[name] = self._vault.settings(known.pinned if known else name)
            except PgvaultError:
                self._settings[name] = None
        return self._settings[name]

    def environment(self) -> Settings:
        return self._vault.settings()

    def vault(self, name: str) -> Vault | None:
        settings = self.settings(name)
        return None if settings is None else self._vault.vault(settings)

    def send(self, name: str, alert: Alert) -> None:
        if name not in self._notifiers:
            settings = self.settings(name) or self._vault.settings()
            self._notifiers[name] = self._alerts.notifier(settings)
        known = self._names.get(name)
        said = known.said if known else f"{name}: "
        self._notifiers[name].send(
            dataclasses.replace(
                alert, message=f"{said}{alert.message}", tags={**alert.tags, "database": name}
            )
        )
        self.sent += 1

    def send_fleet(self, alert: Alert) -> None:
        """An alert about the fleet as a whole, with the environment's own settings."""
        self._alerts.notifier(self._vault.settings()).send(alert)
        self.sent += 1


class FleetAlertTick:
    """One evaluation of the fleet alert sensor, from one cursor to the next."""

    def __init__(
        self,
        instance: DagsterInstance,
        databases: Sequence[DatabaseNames],
        channels: Channels,
        now: datetime,
    ) -> None:
        """`databases`: each database's names, in file order."""
        self.instance = instance
        self.schedules = {names.database.name: names.schedule for names in databases}
        self.names = tuple(self.schedules)
        self.fleet_keys = {names.backup: names.database.name for names in databases}
        self.channels = channels
        self.now = now
        self.runs_read = 0

    @functools.cached_property
    def environment(self) -> str:
        return self.channels.environment().environment

    def run(self, cursor: FleetCursor) -> FleetCursor:
        states = {name: cursor.databases[name] for name in self.names if name in cursor.databases}
        new = [name for name in self.names if name not in states]
        for name in new:
            states[name] = DatabaseState(newest=None, since=self.now)
        positions = self.read_finished_runs(cursor.runs, states)
        due = cursor.health_at is None or self.now - cursor.health_at >= HEALTH_EVERY
        storage = self.health_pass(self.names if due else new, states)
        over_budget = self.budget(storage, cursor.over_budget) if due else cursor.over_budget
        for name in self.names:
            states[name] = self.staleness(name, states[name])
        return FleetCursor(positions, states, self.now if due else cursor.health_at, over_budget)

    def budget(self, storage: int, was_over: bool) -> bool:
        """BACKUP_STORAGE_BUDGET_BYTES is the environment's (one bucket for the fleet): the
        fleet's total is compared with it, alerted once per episode, as status and the
        weekly report do."""
        budget = self.channels.environment().storage_budget_bytes
        over = over_budget(storage, budget, FLEET_BACKUPS)
        if over and not was_over:
            self.channels.send_fleet(Alert("storage_over_budget", "warning", over))
        return over is not None

    def read_finished_runs(
        self, positions: dict[str, str], states: dict[str, DatabaseState]
    ) -> dict[str, str]:
        """Alerts for the runs that ended since `positions`; the positions after them.

        A first tick starts at the log's end: a sensor turned on alerts what happens from then
        on, as Dagster's own run-status sensors do."""
        moved = {}
        for event_type in RUN_END_EVENTS:
            position = positions.get(event_type.value)
            if position is None:
                newest = self.instance.fetch_run_status_changes(event_type, limit=1)
                moved[event_type.value] = newest.cursor
                continue
            result = self.instance.fetch_run_status_changes(
                event_type, limit=RUNS_PER_TICK, cursor=position, ascending=True
            )
            moved[event_type.value] = result.cursor
            ended = {record.run_id: record.timestamp for record in result.records}
            if not ended:
                continue
            runs = self.instance.get_runs(filters=RunsFilter(run_ids=list(ended)))
            self.runs_read += len(runs)
            for run in sorted(runs, key=lambda r: ended[r.run_id]):
                ended_at = datetime.fromtimestamp(ended[run.run_id], UTC)
                self.finished_run(run, event_type == DagsterEventType.RUN_FAILURE, ended_at, states)
        return moved

    def finished_run(
        self, run: DagsterRun, failed: bool, ended_at: datetime, states: dict[str, DatabaseState]
    ) -> None:
        if not may_concern(run, self.fleet_keys) or of_another_environment(run, self.environment):
            return
        events = run_events(self.instance, run.run_id, BACKUP_EVENTS)
        day = run.tags.get(PARTITION_TAG, "?")
        backups = backup_keys_of_run(self.instance, run, self.fleet_keys, events) if failed else ()
        names = sorted(self.fleet_keys[key] for key in backups)
        # None: a refused backfill, which attempted nothing and broke nothing.
        reason = failure_reason(self.instance, run.run_id) if names else None
        if reason is not None:
            for name in names:
                self.channels.send(name, failed_run_alert(reason, day, run.run_id))
        for event in events:
            data = event.event_specific_data
            if isinstance(data, AssetCheckEvaluation):
                checked = self.fleet_keys.get(data.asset_key)
                alert = failed_check_alert(data, data.partition or day) if checked else None
                if checked and alert:
                    tags = {**alert.tags, "run_id": run.run_id}
                    self.channels.send(checked, dataclasses.replace(alert, tags=tags))
            elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                backed_up = self.fleet_keys.get(event.asset_key) if event.asset_key else None
                if backed_up:
                    # The run's end, seconds after the backup's own finish: close enough for 36 h.
                    states[backed_up] = states[backed_up].seen_backup(ended_at)

    def health_pass(self, names: Sequence[str], states: dict[str, DatabaseState]) -> int:
        """Each database's manifests read once: its newest backup, its health warnings and its
        unreadable records, each alerted once per episode. Returns the storage they use."""
        storage = 0
        if not names:
            return storage
        by_key = failed_runs_by_key(
            self.instance,
            self.fleet_keys,
            self.now - HEALTH_WINDOW,
            self.environment,
        )
        failures = {self.fleet_keys[key]: runs for key, runs in by_key.items()}
        for name in names:
            vault = self.channels.vault(name)
            settings = self.channels.settings(name)
            if vault is None or settings is None:
                continue
            manifests, unreadable = vault.scan_manifests()
            state = states[name]
            for manifest in manifests:
                state = state.seen_backup(manifest.finished_at)
            figures = health_figures(manifests, failures.get(name, []), today=self.now.date())
            storage += figures.storage_used_bytes
            active = health_warnings(figures, storage_budget_bytes=None)
            for kind, message in active:
                if kind not in state.warnings:
                    self.channels.send(name, Alert(kind, "warning", message))
            for record in unreadable:
                if record.key not in state.unreadable:
                    self.channels.send(
                        name,
                        Alert(
                            "manifest_unreadable",
                            "warning",
                            f"the backup of {record.day.isoformat()} is skipped, its manifest "
                            f"cannot be read: {record.reason}",
                            {"date": record.day.isoformat()},
                        ),
                    )
            states[name] = dataclasses.replace(
                state,
                warnings=tuple(sorted(kind for kind, _ in active)),
                unreadable=tuple(sorted(r.key for r in unreadable)[:UNREADABLE_KEPT]),
            )
        return storage

    def staleness(self, name: str, state: DatabaseState) -> DatabaseState:
        """`staleness_step` per database; one never backed up counts from when it was first
        seen, so a database just added to the file is not stale before its first run."""
        if state.newest is None and self.now - state.since <= STALE_AFTER:
            return dataclasses.replace(state, stale=False)
        alert, episode = staleness_step(
            state.newest, STALE if state.stale else FRESH, self.now, self.schedules[name]
        )
        if alert is not None:
            self.channels.send(name, alert)
        return dataclasses.replace(state, stale=episode == STALE)


def make_alert_sensor(fleet: Fleet, clock: Clock = utcnow) -> SensorDefinition:
    """The one alert sensor, for every database of `fleet`."""
    names = names_of(fleet)

    @sensor(
        name=names.alert_sensor,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Per database: failed backups and checks from the run-end events since the last "
            "tick, stale backups (36 h), and hourly health and unreadable records."
        ),
    )
    def alert_sensor(
        context: SensorEvaluationContext, vault: VaultResource, alerts: AlertsResource
    ) -> SkipReason:
        channels = Channels(vault, alerts, names.databases)
        tick = FleetAlertTick(context.instance, names.databases, channels, clock())
        cursor = tick.run(FleetCursor.parse(context.cursor))
        context.update_cursor(cursor.dump())
        stale = sorted(name for name, state in cursor.databases.items() if state.stale)
        return SkipReason(
            f"{tick.runs_read} finished runs read, {channels.sent} alerts sent; "
            f"stale: {', '.join(stale) or 'none'}"
        )

    return alert_sensor
