"""Backup health: the manual's dashboard figures, its warning rules and the weekly report.

Figures come from the manifests (every successful backup) plus the failed runs the caller
knows of (the Dagster run history, or nothing on the CLI), so the same numbers appear in
`pgvault status`, the weekly report and the warning alerts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from statistics import mean

from pgvault_assets.engine.vault.manifest import Manifest

SUCCESS_RATE_FLOOR = 0.95
DURATION_FACTOR = 2.0
SHRINK_FLOOR = 0.5
# The manual's critical condition: no backup has succeeded for this long.
STALE_AFTER = timedelta(hours=36)


@dataclass(frozen=True)
class FailedRun:
    day: date
    reason: str


@dataclass(frozen=True)
class HealthFigures:
    """Health over the `window_days` backup dates before `today` (today's is not due yet)."""

    today: date
    window_days: int
    backups_created: int
    failures: tuple[FailedRun, ...]
    average_duration_seconds: float | None
    storage_used_bytes: int
    last_success_at: datetime | None
    last_success_day: date | None

    @property
    def success_count(self) -> int:
        return self.backups_created

    @property
    def failure_count(self) -> int:
        return len(self.failures)

    @property
    def success_rate(self) -> float | None:
        """Successful runs over all finished runs; None when nothing ran in the window."""
        runs = self.backups_created + len(self.failures)
        return self.backups_created / runs if runs else None


def in_window(day: date, today: date, window_days: int) -> bool:
    return today - timedelta(days=window_days) <= day < today


def health_figures(
    manifests: list[Manifest],
    failures: list[FailedRun],
    *,
    today: date,
    window_days: int = 30,
) -> HealthFigures:
    """Figures for one window; storage and the last success count every backup there is."""
    recent = [m for m in manifests if in_window(m.date, today, window_days)]
    failed = tuple(
        sorted((f for f in failures if in_window(f.day, today, window_days)), key=lambda f: f.day)
    )
    newest = max(manifests, key=lambda m: m.finished_at, default=None)
    return HealthFigures(
        today=today,
        window_days=window_days,
        backups_created=len(recent),
        failures=failed,
        average_duration_seconds=mean(m.duration_seconds for m in recent) if recent else None,
        # The backups re-runs replaced take space until retention too.
        storage_used_bytes=sum(v.size_bytes for m in manifests for v in m.versions),
        last_success_at=newest.finished_at if newest else None,
        last_success_day=newest.date if newest else None,
    )


def duration_exceeds_average(
    current: Manifest, history: list[Manifest], *, factor: float = DURATION_FACTOR
) -> tuple[bool, float | None]:
    """Is this backup slower than `factor` x the average of the 30 days before it?"""
    earlier = [
        m.duration_seconds
        for m in history
        if current.date - timedelta(days=30) <= m.date < current.date
    ]
    if not earlier:
        return False, None
    average = mean(earlier)
    return current.duration_seconds > factor * average, average


def size_shrank(
    current: Manifest, history: list[Manifest], *, floor: float = SHRINK_FLOOR
) -> tuple[bool, Manifest | None]:
    """Did the dump shrink below `floor` x the previous backup's? A table may have been emptied."""
    earlier = [m for m in history if m.date < current.date]
    if not earlier:
        return False, None
    previous = max(earlier, key=lambda m: m.date)
    return current.dump_size_bytes < floor * previous.dump_size_bytes, previous


def health_warnings(
    figures: HealthFigures, *, storage_budget_bytes: int | None
) -> list[tuple[str, str]]:
    """The manual's warning conditions that hold now, as (kind, one-line message)."""
    found = []
    rate = figures.success_rate
    if rate is not None and rate < SUCCESS_RATE_FLOOR:
        found.append(
            (
                "success_rate_low",
                f"{figures.window_days}-day backup success rate is {rate:.1%}, under "
                f"{SUCCESS_RATE_FLOOR:.0%}; see the failed runs in Dagster",
            )
        )
    if over := over_budget(figures.storage_used_bytes, storage_budget_bytes):
        found.append(("storage_over_budget", over))
    return found


FLEET_BACKUPS = "the fleet's backups"


def over_budget(used_bytes: int, budget_bytes: int | None, whose: str = "backups") -> str | None:
    """The storage warning when `used_bytes` is over BACKUP_STORAGE_BUDGET_BYTES: a single
    database's backups, or a fleet's together (one bucket, one budget)."""
    if budget_bytes is None or used_bytes <= budget_bytes:
        return None
    return (
        f"{whose} use {format_bytes(used_bytes)}, over the budget of "
        f"{format_bytes(budget_bytes)} (BACKUP_STORAGE_BUDGET_BYTES); "
        "review retention or raise the budget"
    )


def format_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def _rate(figures: HealthFigures) -> str:
    return "-" if figures.success_rate is None else f"{figures.success_rate:.1%}"


def render_weekly_report(
    environment: str, week: HealthFigures, month: HealthFigures, *, generated_at: datetime
) -> str:
    """The Monday report as markdown: one table for the week and 30 days, then the failures."""
    last = (
        f"{month.last_success_day.isoformat()} (finished {month.last_success_at:%Y-%m-%d %H:%M} UTC)"
        if month.last_success_day and month.last_success_at
        else "never"
    )
    lines = [
        f"# pgvault backup health: {environment}",
        "",
        f"Generated {generated_at:%Y-%m-%d %H:%M} UTC. Last successful backup: {last}.",
        "",
        f"| | last {week.window_days} days | last {month.window_days} days |",
        "|---|---:|---:|",
        f"| backups created | {week.backups_created} | {month.backups_created} |",
        f"| successful runs | {week.success_count} | {month.success_count} |",
        f"| failed runs | {week.failure_count} | {month.failure_count} |",
        f"| success rate | {_rate(week)} | {_rate(month)} |",
        f"| average duration | {format_duration(week.average_duration_seconds)} "
        f"| {format_duration(month.average_duration_seconds)} |",
        f"| storage used | {format_bytes(month.storage_used_bytes)} "
        f"| {format_bytes(month.storage_used_bytes)} |",
        "",
    ]
    if month.failures:
        lines += ["## Failures", "", "| date | reason |", "|---|---|"]
        lines += [
            f"| {f.day.isoformat()} | {f.reason.replace('|', '/').splitlines()[0] if f.reason else ''} |"
            for f in month.failures
        ]
    else:
        lines.append(f"No failures in the last {month.window_days} days.")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class DatabaseHealth:
    """One fleet database's figures for the week and 30 days, or why they could not be read."""

    name: str
    week: HealthFigures | None = None
    month: HealthFigures | None = None
    error: str | None = None


@dataclass(frozen=True)
class FormerDatabase:
    """A database backed up once but no longer in the fleet file: its backups stay in the store,
    out of retention's reach, until someone deletes them."""

    name: str
    backups: int
    storage_bytes: int
    newest: date | None


def former_database(name: str, manifests: list[Manifest]) -> FormerDatabase:
    return FormerDatabase(
        name,
        len(manifests),
        sum(m.size_bytes for m in manifests),
        max((m.date for m in manifests), default=None),
    )


def database_health(
    name: str, manifests: list[Manifest], failures: list[FailedRun], *, today: date
) -> DatabaseHealth:
    return DatabaseHealth(
        name,
        week=health_figures(manifests, failures, today=today, window_days=7),
        month=health_figures(manifests, failures, today=today, window_days=30),
    )


def attention_lines(
    health: DatabaseHealth, *, now: datetime, stale_after: timedelta = STALE_AFTER
) -> list[str]:
    """Why one database needs an operator this week; none when it does not."""
    if health.error is not None or health.week is None or health.month is None:
        return [f"could not be read: {health.error}"]
    lines = []
    last = health.month.last_success_at
    if last is None:
        lines.append("no backup has ever succeeded")
    elif now - last > stale_after:
        hours = stale_after.total_seconds() / 3600
        lines.append(
            f"no backup has succeeded in the last {hours:.0f} h (last {last:%Y-%m-%d %H:%M} UTC)"
        )
    lines += [message for _, message in health_warnings(health.month, storage_budget_bytes=None)]
    lines += [
        f"failed on {failure.day.isoformat()}: {' '.join(failure.reason.split())}"
        for failure in health.week.failures
    ]
    return lines


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "/")


def render_fleet_report(
    environment: str,
    databases: list[DatabaseHealth],
    *,
    generated_at: datetime,
    storage_budget_bytes: int | None = None,
    former: Sequence[FormerDatabase] = (),
) -> str:
    """The Monday report of a fleet as markdown: one row per database, then what needs
    attention, so a fleet of hundreds is read from its exceptions, not its rows. `former`:
    the databases removed from the file whose backups are still stored."""
    lines = [
        f"# pgvault fleet backup health: {environment}",
        "",
        f"Generated {generated_at:%Y-%m-%d %H:%M} UTC for {len(databases)} databases.",
        "",
        "| database | last backup | backups (7 days) | failed runs (7 days) "
        "| success rate (30 days) | average duration (30 days) | storage used |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    total = 0
    for health in databases:
        week, month = health.week, health.month
        if week is None or month is None:
            lines.append(f"| {health.name} | unknown | - | - | - | - | - |")
            continue
        total += month.storage_used_bytes
        last = month.last_success_day.isoformat() if month.last_success_day else "never"
        lines.append(
            f"| {health.name} | {last} | {week.backups_created} | {week.failure_count} "
            f"| {_rate(month)} | {format_duration(month.average_duration_seconds)} "
            f"| {format_bytes(month.storage_used_bytes)} |"
        )
    lines += ["", f"Storage used by the fleet: {format_bytes(total)}.", ""]
    kept = [database for database in former if database.backups]
    if kept:
        lines += [
            "## No longer in the fleet file",
            "",
            "| database | backups kept | newest | storage used |",
            "|---|---:|---|---:|",
        ]
        for database in kept:
            newest = database.newest.isoformat() if database.newest else "-"
            lines.append(
                f"| {database.name} | {database.backups} | {newest} "
                f"| {format_bytes(database.storage_bytes)} |"
            )
        lines.append("")
    attention = [
        f"- **{health.name}**: {_cell(line)}"
        for health in databases
        for line in attention_lines(health, now=generated_at)
    ]
    attention += [
        f"- **{database.name}**: no longer in the fleet file; its {database.backups} backups "
        f"({format_bytes(database.storage_bytes)}) are kept and no retention applies to them: "
        "put it back in the file to restore from them, or delete its folder once not needed"
        for database in kept
    ]
    if over := over_budget(total, storage_budget_bytes, FLEET_BACKUPS):
        attention.append(f"- {over}")
    lines += ["## Needs attention", ""]
    lines += attention or ["Nothing: every database backed up on time, without failures."]
    return "\n".join(lines) + "\n"
