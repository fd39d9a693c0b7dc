"""The alert episodes only Dagster's history holds, for `pgvault_alerts_open`: a failed backup
run (`backup_failed`, `upload_failing`), a failed checksum or decryption check
(`checksum_mismatch`, `decrypts_fully`) and a 30-day success rate under the floor
(`success_rate_low`). A failed run leaves no manifest and a failed check only an event, so the
store cannot show them.

The episodes are the alert sensor's (alerting.py): a failure opens one, the
next success of the same thing (a backup run of that database, an evaluation of that check)
closes it, and the kind a failure opens is what the sensors' own `failed_run_alert` and
`failed_check_alert` call it, from the same reading of a run (history.py `run_outcome`).
`RunHistory` and the episodes (engine/monitoring/alert_state.py) are the pure part;
`RunHistoryReader` feeds them from the instance the way the alert sensor reads it: the
run-end events after a cursor (public `fetch_run_status_changes`), each new run's events read
once. Only the first read looks back, at the runs of the last 31 days, bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunsFilter,
)

from pgvault_assets.defs.alerting import RUN_END_EVENTS, failed_check_alert
from pgvault_assets.defs.backup import CHECKSUM_MATCHES, DECRYPTS_FULLY
from pgvault_assets.defs.history import (
    counted_failure,
    may_concern,
    of_another_environment,
    run_outcome,
)
from pgvault_assets.defs.naming import names_of
from pgvault_assets.engine.monitoring.alert_state import (
    Outcome,
    failed_run_alert,
    latest_outcomes,
    success_rate_low,
)
from pgvault_assets.engine.monitoring.report import FailedRun
from pgvault_assets.fleet import Fleet

RUN_KINDS = ("backup_failed", "upload_failing")
CHECK_KINDS = {CHECKSUM_MATCHES: "checksum_mismatch", DECRYPTS_FULLY: "decrypts_fully"}
HISTORY_KINDS = (*RUN_KINDS, *CHECK_KINDS.values(), "success_rate_low")
BACKUP_RUN = "backup_run"  # the subject a backup run's outcome is about; a check's is its name
LOOK_BACK = timedelta(days=31)
RUNS_AT_START = 1000
RUNS_PER_READ = 200  # per run-end event type; a longer backlog is read over the next scrapes


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
    return names_of(fleet).backup_keys()


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

    def _observe(self, run: DagsterRun, failed: bool, ended_at: float) -> None:
        if of_another_environment(run, self.environment) or not may_concern(run, self.keys):
            return
        self.runs_read += 1
        outcome = run_outcome(self.instance, run, self.keys, failed)
        outcomes = []
        counted = counted_failure(run, self.environment)
        for name in outcome.backups:
            if not failed:
                outcomes.append(Outcome(name, BACKUP_RUN, ended_at, None))
            elif outcome.reason is not None:
                opens: str | None = failed_run_alert(outcome.reason, outcome.day, run.run_id).kind
                outcomes.append(Outcome(name, BACKUP_RUN, ended_at, opens))
                if counted is not None and counted[0] == name:
                    self._failures[name][run.run_id] = FailedRun(counted[1], outcome.reason)
        for name, evaluation in outcome.checks:
            if evaluation.check_name in CHECK_KINDS:
                alert = failed_check_alert(evaluation, evaluation.partition or outcome.day)
                opens = alert.kind if alert else None
                outcomes.append(Outcome(name, evaluation.check_name, ended_at, opens))
        self._latest = latest_outcomes(self._latest, outcomes)
