"""The alert episodes only Dagster's history holds, for `pgvault_alerts_open`: a failed backup
run (`backup_failed`, `upload_failing`), a failed checksum or decryption check
(`checksum_mismatch`, `decrypts_fully`) and a 30-day success rate under the floor
(`success_rate_low`). A failed run leaves no manifest and a failed check only an event, so the
store cannot show them.

The episodes are the alert sensor's (alerting.py): a failure opens one, the
next success of the same thing (a backup run of that database, an evaluation of that check)
closes it, and the kind a failure opens is what the sensors' own `failed_run_alert` and
`failed_check_alert` call it. `latest_outcomes` and `RunHistory` are the pure part;
`RunHistoryReader` feeds them from the instance the way the fleet sensor reads it: the
run-end events after a cursor (public `fetch_run_status_changes`), each new run's events read
once. Only the first read looks back, at the runs of the last 31 days, bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunsFilter,
)

from pgvault_assets.defs.alerting import failed_check_alert, failed_run_alert
from pgvault_assets.defs.backup import CHECKSUM_MATCHES, DECRYPTS_FULLY
from pgvault_assets.defs.history import (
    DATABASE_TAG,
    ENVIRONMENT_TAG,
    PARTITION_TAG,
    backup_keys_of_run,
    failure_reason,
    may_concern,
    of_another_environment,
    run_events,
)
from pgvault_assets.defs.naming import names_of
from pgvault_assets.engine.monitoring.report import (
    FailedRun,
    HealthFigures,
    health_warnings,
    in_window,
)
from pgvault_assets.fleet import Fleet

RUN_KINDS = ("backup_failed", "upload_failing")
CHECK_KINDS = {CHECKSUM_MATCHES: "checksum_mismatch", DECRYPTS_FULLY: "decrypts_fully"}
HISTORY_KINDS = (*RUN_KINDS, *CHECK_KINDS.values(), "success_rate_low")
BACKUP_RUN = "backup_run"  # the subject a backup run's outcome is about; a check's is its name
HEALTH_WINDOW_DAYS = 30  # as health_figures counts the success rate
LOOK_BACK = timedelta(days=31)
RUNS_AT_START = 1000
RUNS_PER_READ = 200  # per run-end event type; a longer backlog is read over the next scrapes
RUN_END_EVENTS = (DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_SUCCESS)
RUN_EVENTS = {
    DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
    DagsterEventType.ASSET_CHECK_EVALUATION,
}


@dataclass(frozen=True)
class Outcome:
    """How one attempt at `subject` (a database's backup run, or one of its checks) ended."""

    database: str
    subject: str
    ended_at: float
    opens: str | None
    """The alert kind the failure opens; None for a success, which closes the episode."""


def latest_outcomes(
    known: Mapping[tuple[str, str], Outcome], outcomes: Iterable[Outcome]
) -> dict[tuple[str, str], Outcome]:
    """Each (database, subject)'s latest outcome: the one that says whether its episode is
    open. Order-free (the later end wins), so a run read twice changes nothing."""
    latest = dict(known)
    for outcome in outcomes:
        key = (outcome.database, outcome.subject)
        if key not in latest or latest[key].ended_at <= outcome.ended_at:
            latest[key] = outcome
    return latest


def success_rate_low(
    backup_dates: Collection[date], failures: Iterable[FailedRun], today: date
) -> bool:
    """The health sensors' warning, from the dates the store holds backups of and the failed
    runs: the same rule (`health_warnings`) over the same 30-day window."""
    figures = HealthFigures(
        today=today,
        window_days=HEALTH_WINDOW_DAYS,
        backups_created=sum(in_window(day, today, HEALTH_WINDOW_DAYS) for day in backup_dates),
        failures=tuple(f for f in failures if in_window(f.day, today, HEALTH_WINDOW_DAYS)),
        average_duration_seconds=None,
        storage_used_bytes=0,
        last_success_at=None,
        last_success_day=None,
    )
    return any(
        kind == "success_rate_low"
        for kind, _ in health_warnings(figures, storage_budget_bytes=None)
    )


@dataclass(frozen=True)
class RunHistory:
    """What the instance's history says, at one reading."""

    latest: Mapping[tuple[str, str], Outcome] = field(default_factory=dict)
    failures: Mapping[str, tuple[FailedRun, ...]] = field(default_factory=dict)

    def open_alerts(
        self, database: str, backup_dates: Collection[date] | None, today: date
    ) -> dict[str, int]:
        """Every history kind, 0 or 1, for `database`; `backup_dates` None when its store
        could not be read (the success rate is then unknown, not low)."""
        found = dict.fromkeys(HISTORY_KINDS, 0)
        for subject in (BACKUP_RUN, *CHECK_KINDS):
            outcome = self.latest.get((database, subject))
            if outcome is not None and outcome.opens is not None:
                found[outcome.opens] = 1
        if backup_dates is not None:
            failures = self.failures.get(database, ())
            found["success_rate_low"] = int(success_rate_low(backup_dates, failures, today))
        return found


def backup_keys(fleet: Fleet) -> dict[AssetKey, str]:
    """Each database's backup asset, as the definitions name it, mapped to the database."""
    return {names.backup: names.database.name for names in names_of(fleet).databases}


class RunHistoryReader:
    """The instance's history of `keys` (each backup asset mapped to its database's name) in
    `environment`, re-read at most once per `refresh` and then only the runs that ended since."""

    def __init__(
        self,
        instance: DagsterInstance,
        environment: str,
        keys: Mapping[AssetKey, str],
        refresh: timedelta,
    ) -> None:
        self.instance = instance
        self.environment = environment
        self.keys = dict(keys)
        self.refresh = refresh
        self.positions: dict[DagsterEventType, str] = {}
        self.read_at: datetime | None = None
        self.runs_read = 0
        self._latest: dict[tuple[str, str], Outcome] = {}
        self._failures: dict[str, dict[str, FailedRun]] = {name: {} for name in self.keys.values()}
        self._lock = threading.Lock()  # concurrent scrapes share one reader

    def read(self, now: datetime) -> RunHistory:
        with self._lock:
            if self.read_at is None:
                self._start(now)
                self.read_at = now
            elif now - self.read_at >= self.refresh:
                self._follow()
                self.read_at = now
            oldest = now.date() - LOOK_BACK
            return RunHistory(
                dict(self._latest),
                {
                    name: tuple(f for f in runs.values() if f.day >= oldest)
                    for name, runs in self._failures.items()
                },
            )

    def _start(self, now: datetime) -> None:
        """The positions to follow from, then the last 31 days' finished runs (newest first,
        bounded): a run ending between the two is read twice, which changes nothing."""
        for event_type in RUN_END_EVENTS:
            self.positions[event_type] = self.instance.fetch_run_status_changes(
                event_type, limit=1
            ).cursor
        records = self.instance.get_run_records(
            filters=RunsFilter(
                statuses=[DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE],
                created_after=now - LOOK_BACK,
            ),
            limit=RUNS_AT_START,
        )
        for record in records:
            run = record.dagster_run
            ended = record.end_time or record.update_timestamp.timestamp()
            self._observe(run, run.status == DagsterRunStatus.FAILURE, ended)

    def _follow(self) -> None:
        for event_type in RUN_END_EVENTS:
            result = self.instance.fetch_run_status_changes(
                event_type,
                limit=RUNS_PER_READ,
                cursor=self.positions[event_type],
                ascending=True,
            )
            self.positions[event_type] = result.cursor
            ended = {record.run_id: record.timestamp for record in result.records}
            if not ended:
                continue
            for run in self.instance.get_runs(filters=RunsFilter(run_ids=list(ended))):
                self._observe(run, event_type == DagsterEventType.RUN_FAILURE, ended[run.run_id])

    def _counts_for(self, run: DagsterRun, name: str) -> bool:
        """Whether a failed run counts in `name`'s success rate, as `failed_runs_by_key` counts
        it for the health sensors: tagged as this environment's and this database's, dated."""
        if run.tags.get(ENVIRONMENT_TAG) != self.environment or run.tags.get(DATABASE_TAG) != name:
            return False
        try:
            date.fromisoformat(run.tags.get(PARTITION_TAG, ""))
        except ValueError:
            return False
        return True

    def _observe(self, run: DagsterRun, failed: bool, ended_at: float) -> None:
        if of_another_environment(run, self.environment) or not may_concern(run, self.keys):
            return
        self.runs_read += 1
        events = run_events(self.instance, run.run_id, RUN_EVENTS)
        day = run.tags.get(PARTITION_TAG, "?")
        outcomes = []
        backups = backup_keys_of_run(self.instance, run, self.keys, events)
        # None: a refused backfill, which attempted nothing and broke nothing.
        reason = failure_reason(self.instance, run.run_id) if failed and backups else None
        for key in backups:
            name = self.keys[key]
            if not failed:
                outcomes.append(Outcome(name, BACKUP_RUN, ended_at, None))
            elif reason is not None:
                opens: str | None = failed_run_alert(reason, day, run.run_id).kind
                outcomes.append(Outcome(name, BACKUP_RUN, ended_at, opens))
                if self._counts_for(run, name):
                    self._failures[name][run.run_id] = FailedRun(date.fromisoformat(day), reason)
        for event in events:
            data = event.event_specific_data
            if not isinstance(data, AssetCheckEvaluation) or data.check_name not in CHECK_KINDS:
                continue
            checked = self.keys.get(data.asset_key)
            if checked is not None:
                alert = failed_check_alert(data, data.partition or day)
                opens = alert.kind if alert else None
                outcomes.append(Outcome(checked, data.check_name, ended_at, opens))
        self._latest = latest_outcomes(self._latest, outcomes)
