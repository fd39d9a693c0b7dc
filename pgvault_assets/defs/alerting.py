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
from collections.abc import Sequence
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
    failed_runs_by_key,
    may_concern,
    of_another_environment,
    run_outcome,
)
from pgvault_assets.defs.naming import DatabaseNames, names_of
from pgvault_assets.defs.resources import AlertsResource, VaultResource
from pgvault_assets.engine.basics.clock import Clock, utcnow
from pgvault_assets.engine.monitoring.alert_state import (
    FRESH,
    STALE,
    UNREADABLE_KEPT,
    DatabaseState,
    FleetCursor,
    failed_run_alert,
    staleness_step,
    unreadable_alert,
)
from pgvault_assets.engine.monitoring.report import (
    FLEET_BACKUPS,
    STALE_AFTER,
    health_figures,
    health_warnings,
    over_budget,
)
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import PgvaultError
from pgvault_assets.fleet import Fleet
from pgvault_assets.settings import Settings


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
        outcome = run_outcome(self.instance, run, self.fleet_keys, failed)
        if outcome.reason is not None:
            for name in outcome.backups:
                self.channels.send(name, failed_run_alert(outcome.reason, outcome.day, run.run_id))
        for name, evaluation in outcome.checks:
            alert = failed_check_alert(evaluation, evaluation.partition or outcome.day)
            if alert:
                tags = {**alert.tags, "run_id": run.run_id}
                self.channels.send(name, dataclasses.replace(alert, tags=tags))
        for name in outcome.materialized:
            # The run's end, seconds after the backup's own finish: close enough for 36 h.
            states[name] = states[name].seen_backup(ended_at)

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
                    self.channels.send(name, unreadable_alert(record))
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
