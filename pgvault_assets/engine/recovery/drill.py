"""The quarterly disaster-recovery drill: prove last month's backup recovers, within the RTO.

A backup that was never restored is a hope. The drill restores the previous month's monthly
backup onto a server of its own (RESTORE_CHECK_DATABASE_URL's, else a throwaway cluster; never
production's) into a throwaway database (always dropped), checks it, runs the sample queries,
and times every stage; starting a throwaway cluster is not a stage of recovery, so not timed. The time is scaled by the production database's size over the drill
database's, because a drill on a small copy would otherwise pass an objective production
would miss. The report is data (for the Dagster asset and its check) with a markdown view.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgvault_assets.alerts import Alert
from pgvault_assets.engine.approvals.audit import unique_name
from pgvault_assets.engine.basics.clock import Clock, utcnow
from pgvault_assets.engine.basics.interrupts import said_as
from pgvault_assets.engine.postgres.cluster import major_of, proof_server
from pgvault_assets.engine.postgres.integrity import CheckResult, check_database_integrity
from pgvault_assets.engine.postgres.postgres import connect, one_row, user_tables
from pgvault_assets.engine.postgres.server_context import read_context
from pgvault_assets.engine.restore.restore import restore_into_scratch
from pgvault_assets.engine.restore.verify import verify_backup
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import BackupNotFound, PgvaultError
from pgvault_assets.redact import redact
from pgvault_assets.settings import DatabaseUrl, Settings

DEFAULT_RTO = timedelta(hours=4)
Timer = Callable[[], float]


@dataclass(frozen=True)
class QueryResult:
    statement: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class DrillReport:
    environment: str
    started_at: datetime
    backup_date: date
    backup_choice: str
    sha256: str
    recovery_time_objective_seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    checks: tuple[CheckResult, ...] = ()
    queries: tuple[QueryResult, ...] = ()
    drill_database_bytes: int | None = None
    production_database_bytes: int | None = None
    failure: str | None = None
    abandoned_scratch: tuple[str, ...] = ()
    """Scratch databases of killed runs on the server, dropped before this drill restored."""

    @property
    def measured_seconds(self) -> float:
        return round(sum(self.stage_seconds.values()), 3)

    @property
    def scale(self) -> float:
        """Production size over drill size; 1 when either is unknown (said in the findings)."""
        if not self.drill_database_bytes or not self.production_database_bytes:
            return 1.0
        return self.production_database_bytes / self.drill_database_bytes

    @property
    def scaled_seconds(self) -> float:
        return round(self.measured_seconds * self.scale, 3)

    @property
    def meets_objective(self) -> bool:
        return self.failure is None and self.scaled_seconds <= self.recovery_time_objective_seconds

    @property
    def checks_passed(self) -> bool:
        return all(c.passed for c in self.checks) and all(q.passed for q in self.queries)

    @property
    def passed(self) -> bool:
        return self.failure is None and self.meets_objective and self.checks_passed

    def findings(self) -> list[str]:
        found = [self.backup_choice]
        if self.failure:
            found.append(f"the drill failed: {self.failure}")
        found += [
            f"integrity check {c.name} failed: {c.detail}" for c in self.checks if not c.passed
        ]
        found += [
            f"sample query failed: {q.statement} ({q.detail})" for q in self.queries if not q.passed
        ]
        if self.production_database_bytes is None:
            found.append(
                "production size unknown (DATABASE_URL unset or unreachable): time not scaled"
            )
        objective = self.recovery_time_objective_seconds
        if self.failure is None:
            verdict = "within" if self.meets_objective else "MISSES"
            found.append(
                f"scaled recovery time {_hours(self.scaled_seconds)} is {verdict} the "
                f"{_hours(objective)} objective (measured {self.measured_seconds:.1f} s, scaled by {self.scale:.2f})"
            )
        found += [
            f"dropped {name}, the scratch database an interrupted run left on the server"
            for name in self.abandoned_scratch
        ]
        if self.stage_seconds:
            slowest = max(self.stage_seconds, key=lambda s: self.stage_seconds[s])
            found.append(f"slowest stage: {slowest}")
        return found

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.astimezone(UTC).isoformat()
        data["backup_date"] = self.backup_date.isoformat()
        data.update(
            measured_seconds=self.measured_seconds,
            scale=self.scale,
            scaled_seconds=self.scaled_seconds,
            meets_objective=self.meets_objective,
            passed=self.passed,
            findings=self.findings(),
        )
        return data

    def to_markdown(self) -> str:
        lines = [
            f"# Disaster-recovery drill, {self.started_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"**Result: {'PASSED' if self.passed else 'FAILED'}**, environment `{self.environment}`, "
            f"backup {self.backup_date} (sha256 `{self.sha256[:16]}…`)",
            "",
            "| stage | seconds |",
            "|---|---:|",
            *(f"| {name} | {seconds:.3f} |" for name, seconds in self.stage_seconds.items()),
            f"| **total** | **{self.measured_seconds:.3f}** |",
            "",
            f"Drill database {_size(self.drill_database_bytes)}, production {_size(self.production_database_bytes)}: "
            f"scaled recovery time {_hours(self.scaled_seconds)} against an objective of "
            f"{_hours(self.recovery_time_objective_seconds)}.",
            "",
            "| check | result | detail |",
            "|---|---|---|",
            *(
                f"| {c.name} | {'skipped' if c.skipped else 'pass' if c.passed else 'FAIL'} | {_cell(c.detail)} |"
                for c in self.checks
            ),
            *(
                f"| query `{_cell(q.statement)}` | {'pass' if q.passed else 'FAIL'} | {_cell(q.detail)} |"
                for q in self.queries
            ),
            "",
            "## Findings",
            "",
            *(f"- {finding}" for finding in self.findings()),
        ]
        return "\n".join(lines) + "\n"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.1f} s"


def _size(size: int | None) -> str:
    return "unknown size" if size is None else f"{size / 1024 / 1024:.1f} MiB"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def choose_backup(days: Iterable[date], today: date) -> tuple[date, str]:
    """The previous month's monthly backup: its 1st, else the earliest backup of that month."""
    first_of_month = today.replace(day=1)
    month_start = (first_of_month - timedelta(days=1)).replace(day=1)
    in_month = sorted(d for d in days if month_start <= d < first_of_month)
    if not in_month:
        raise BackupNotFound(
            f"no backup from {month_start:%B %Y} to drill with; check pgvault list-backups and the retention settings"
        )
    if in_month[0] == month_start:
        return (
            month_start,
            f"drilled the monthly backup of {month_start} (1st of {month_start:%B %Y})",
        )
    return in_month[0], (
        f"no backup of {month_start} (1st of {month_start:%B %Y}); drilled the nearest one in that month, "
        f"{in_month[0]}"
    )


def read_queries(path: Path | None, conn: psycopg.Connection) -> list[str]:
    """The sample queries: the file's statements (each ending with `;` at a line's end), or
    by default a full count of every table, which reads every page of it."""
    if path is None:
        return [
            sql.SQL("SELECT count(*) FROM {}.{}")
            .format(sql.Identifier(schema), sql.Identifier(table))
            .as_string(conn)
            for schema, table in user_tables(conn)
        ]
    text = path.read_text()
    return [s.strip() for s in re.split(r";[ \t]*$", text, flags=re.MULTILINE) if _has_sql(s)]


def _has_sql(statement: str) -> bool:
    return any(
        line.strip() and not line.strip().startswith("--") for line in statement.splitlines()
    )


def run_queries(url: DatabaseUrl, queries_file: Path | None) -> tuple[QueryResult, ...]:
    """Each query in its own read-only transaction, so one failure does not hide the others."""
    results = []
    with connect(url, autocommit=False) as conn:
        conn.read_only = True
        for statement in read_queries(queries_file, conn):
            conn.rollback()
            try:
                rows = conn.execute(statement).fetchall()
                results.append(QueryResult(statement, True, f"{len(rows)} rows"))
            except psycopg.Error as exc:
                results.append(QueryResult(statement, False, str(exc).strip().splitlines()[0]))
        conn.rollback()
    return tuple(results)


def database_bytes(url: DatabaseUrl) -> int:
    with connect(url) as conn:
        (size,) = one_row(conn, "SELECT pg_database_size(current_database())")
    return int(size)


def run_configured_drill(
    vault: Vault, settings: Settings, *, rto_hours: float | None = None
) -> DrillReport:
    """The drill as the settings configure it (the proof server, the drill's queries, the
    recovery time objective unless `rto_hours` overrides it), from the CLI and Dagster alike."""
    recovery = settings.recovery
    return run_drill(
        vault,
        settings.restore_check_database_url,
        production_url=settings.database_url,
        queries_file=recovery.drill_queries_file,
        recovery_time_objective=(
            timedelta(hours=rto_hours) if rto_hours else recovery.recovery_time_objective
        ),
    )


def run_drill(
    vault: Vault,
    server_url: DatabaseUrl | None,
    *,
    production_url: DatabaseUrl | None = None,
    queries_file: Path | None = None,
    recovery_time_objective: timedelta = DEFAULT_RTO,
    now: Clock = utcnow,
    timer: Timer = time.perf_counter,
) -> DrillReport:
    """Run the drill on `server_url`'s server, or on a throwaway cluster when it is None, and
    return its report (also when it failed). The cluster keeps fsync on: its timings stand
    for production's recovery.

    Only choosing no backup at all raises; a failure after that is the drill's finding, and
    an interruption (`Interrupted`) ends it with its scratch database and cluster removed.
    """
    with said_as(
        "drill interrupted: its scratch database and throwaway cluster were removed; "
        "no report was stored"
    ):
        return _run_drill(
            vault,
            server_url,
            production_url=production_url,
            queries_file=queries_file,
            recovery_time_objective=recovery_time_objective,
            now=now,
            timer=timer,
        )


def _run_drill(
    vault: Vault,
    server_url: DatabaseUrl | None,
    *,
    production_url: DatabaseUrl | None,
    queries_file: Path | None,
    recovery_time_objective: timedelta,
    now: Clock,
    timer: Timer,
) -> DrillReport:
    started_at = now()
    manifests = {m.date: m for m in vault.list_manifests()}
    day, choice = choose_backup(manifests, started_at.astimezone(UTC).date())
    stages: dict[str, float] = {}
    checks: tuple[CheckResult, ...] = ()
    queries: tuple[QueryResult, ...] = ()
    drill_bytes = None
    failure = None
    abandoned: tuple[str, ...] = ()

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[None]:
        began = timer()
        try:
            yield
        finally:
            stages[name] = round(timer() - began, 3)

    try:
        with stage("verify"):
            verify_backup(vault, day, full=True)
        with contextlib.ExitStack() as cleanup:
            server = cleanup.enter_context(
                proof_server(
                    server_url, source_major=major_of(manifests[day].server_version), durable=True
                )
            )
            with stage("restore"):
                scratch = cleanup.enter_context(
                    restore_into_scratch(vault, day, server, label="drill", now=now)
                )
            url, abandoned = scratch.url, scratch.abandoned
            with stage("integrity"):
                checks = tuple(
                    check_database_integrity(
                        url,
                        manifests[day],
                        context=read_context(vault, manifests[day]),
                        install_amcheck=True,
                    )
                )
            with stage("queries"):
                queries = run_queries(url, queries_file)
            drill_bytes = database_bytes(url)
    except PgvaultError as exc:
        failure = redact(str(exc))
    production_bytes = None
    if production_url is not None:
        with contextlib.suppress(PgvaultError):
            production_bytes = database_bytes(production_url)
    return DrillReport(
        environment=vault.environment,
        started_at=started_at,
        backup_date=day,
        backup_choice=choice,
        sha256=manifests[day].sha256,
        recovery_time_objective_seconds=recovery_time_objective.total_seconds(),
        stage_seconds=stages,
        checks=checks,
        queries=queries,
        drill_database_bytes=drill_bytes,
        production_database_bytes=production_bytes,
        failure=failure,
        abandoned_scratch=abandoned,
    )


def store_report(vault: Vault, report: DrillReport) -> str:
    """Keep the report beside the backups (markdown to read, JSON to compare); returns its key."""
    stem = f"{vault.environment}/drills/{unique_name(report.started_at)}-{report.backup_date}"
    vault.store.put_bytes(f"{stem}.json", json.dumps(report.to_dict(), indent=2).encode())
    vault.store.put_bytes(f"{stem}.md", report.to_markdown().encode())
    return f"{stem}.md"


def drill_alert(report: DrillReport, run_id: str) -> Alert:
    """A drill that failed or missed its objective pages: recovery would not be in time."""
    return Alert(
        "drill_over_objective"
        if report.failure is None and report.checks_passed
        else "drill_failed",
        "fatal",
        f"the recovery drill of the backup of {report.backup_date} did not pass: "
        + "; ".join(report.findings()),
        {"run_id": run_id, "partition": report.backup_date.isoformat()},
        details={
            "scaled_recovery_seconds": report.scaled_seconds,
            "recovery_time_objective_seconds": report.recovery_time_objective_seconds,
        },
    )
