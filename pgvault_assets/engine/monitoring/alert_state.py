"""What the alert sensor decides and remembers, as plain Python: the stale-backup episode, a
failed run's alert, each database's state between ticks and the cursor that carries it.

The sensor (defs/alerting.py) reads Dagster's run-end events and hands over what it found;
the run-history metrics (defs/run_episodes.py) call a failure what the sensor calls it. The
episodes (`Outcome`, `latest_outcomes`) are the metrics' view of the same alerts: a failure
opens one, the next success of the same thing closes it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime

from pgvault_assets.alerts import Alert
from pgvault_assets.engine.monitoring.report import (
    STALE_AFTER,
    FailedRun,
    HealthFigures,
    health_warnings,
    in_window,
)
from pgvault_assets.engine.vault.vault import UnreadableRecord

STALE = "stale"
FRESH = "fresh"
UNREADABLE_KEPT = 100  # per database: the cursor stays bounded by the fleet's size
HEALTH_WINDOW_DAYS = 30  # as health_figures counts the success rate


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


def unreadable_alert(record: UnreadableRecord) -> Alert:
    """A backup skipped because its manifest cannot be read: warned once per record."""
    return Alert(
        "manifest_unreadable",
        "warning",
        f"the backup of {record.day.isoformat()} is skipped, its manifest cannot be read: "
        f"{record.reason}",
        {"date": record.day.isoformat()},
    )


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
