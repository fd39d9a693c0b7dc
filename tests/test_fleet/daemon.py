"""A real `dagster-daemon` on PostgreSQL storage for the fleet's daemon tests (and the fleet
benchmark): the production dagster.yaml in a home of its own, the daemon in a session of its
own, databases whose dumps the test holds with a table lock, and what the event log says.

Every wait is on a condition with a deadline, never a fixed sleep: on a loaded machine a
daemon tick, a run worker's start and a dump all take longer, and only the deadline grows.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.scheduler.instigation import (
    InstigatorState,
    InstigatorStatus,
    InstigatorType,
    ScheduleInstigatorData,
)
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

REPO = Path(__file__).resolve().parents[2]
DAEMON = str(Path(sys.executable).with_name("dagster-daemon"))
LOCATION = Path(__file__).with_name("fleet_location.py")
LOCATION_NAME = "pgvault_fleet"
SCHEDULE = "fleet_backup_schedule_02"  # every database's default hour; see fleet_location.py
TERMINAL = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
EVERY_CHECK = (
    "checksum_matches",
    "decrypts_fully",
    "duration_within_average",
    "size_not_shrunk",
    "restorable",
)
DATABASE_TAG = "pgvault/database"
SERVER_TAG = "pgvault/server"
PARENT_RUN_TAG = "dagster/parent_run_id"  # a run retry's tag naming the run it retries
_STARTED_PROCESS = re.compile(r"Started process for run \(pid: (\d+)\)")


def wait_for(
    condition: Callable[[], Any], what: str, deadline: datetime, log: Path | None = None
) -> Any:
    """`condition()`'s first truthy result; a one-line failure (and the daemon's log) at the
    deadline."""
    while datetime.now(UTC) < deadline:
        if result := condition():
            return result
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}", pytrace=False)


def tick_caught_up_at_start(home: Path, monkeypatch: pytest.MonkeyPatch) -> datetime:
    """Have the test location's schedule tick once, at the current minute (already begun),
    and record it as started a second before that tick: the daemon's first scheduler pass,
    as soon as it has loaded the code location, catches the one missed tick up. Ticking at a
    future whole minute instead idles 60-120 s for a daemon that is ready in seconds.

    The wall clock, not the run's pinned one: the backups refuse any day but the latest
    complete one by the clock they run at. The record is what `dagster schedule start`
    writes, with an earlier start; it names the schedule as the daemon loads it (the same
    workspace file), so the daemon finds it."""
    tick = datetime.now(UTC).replace(second=0, microsecond=0)
    monkeypatch.setenv("PGVAULT_TEST_TICK_AT", f"{tick.hour}:{tick.minute}")
    target = WorkspaceFileTarget(paths=[str(home / "workspace.yaml")])
    with (
        DagsterInstance.get() as instance,
        WorkspaceProcessContext(instance, target) as workspace,
    ):
        location = workspace.create_request_context().get_code_location(LOCATION_NAME)
        (repository,) = location.get_repositories().values()
        schedule = repository.get_schedule(SCHEDULE)
        started = ScheduleInstigatorData(schedule.cron_schedule, tick.timestamp() - 1)
        instance.add_instigator_state(
            InstigatorState(
                schedule.get_remote_origin(),
                InstigatorType.SCHEDULE,
                InstigatorStatus.RUNNING,
                started,
            )
        )
    return tick


def away_from_midnight() -> bool:
    """A tick just before midnight UTC would name a day its run, just after, may not back up."""
    now = datetime.now(UTC)
    return not (now.hour == 23 and now.minute >= 55)


def production_home(
    home: Path,
    dagster_pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
    timing: Mapping[str, Mapping[str, int]] | None = None,
) -> Path:
    """The repo's dagster.yaml in `home` on `dagster_pg_url`, and a workspace of the test's
    fleet location. `timing` sets `*_seconds` values inside dagster.yaml's sections (e.g.
    run_monitoring's intervals) so a test need not wait minutes; nothing else changes."""
    home.mkdir()
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    for section, values in (timing or {}).items():
        not_timing = [key for key in values if not key.endswith("_seconds")]
        assert not not_timing, f"only timing values may change, not {not_timing}"
        config[section].update(values)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_pg_url)
    workspace = {
        "load_from": [
            {
                "python_file": {
                    "relative_path": str(LOCATION),
                    "working_directory": str(REPO),
                    "location_name": LOCATION_NAME,
                }
            }
        ]
    }
    (home / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    return home


@contextlib.contextmanager
def started_daemon(
    home: Path, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster-daemon run` of `home`'s workspace, in `env` (this process's by default), in a
    session of its own (with the code server and run workers it starts), ended with them at
    the block's end."""
    with (home / "daemon.log").open("ab") as log:
        process = subprocess.Popen(
            [DAEMON, "run", "-w", str(home / "workspace.yaml")],
            cwd=home,
            env=dict(os.environ if env is None else env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
            # A code server with a run in flight outlives the daemon: end the whole group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def runs_the_test_holds(monkeypatch: pytest.MonkeyPatch, server_url: str, lock_wait: int) -> None:
    """Settings for backup runs the test holds on its locks: the dumps wait `lock_wait` seconds
    (far longer than a production default), a failed backup is not retried, and each run's
    restore proof goes to a scratch database of `server_url` rather than a throwaway cluster
    per run, so many proofs cost seconds."""
    monkeypatch.setenv("BACKUP_LOCK_WAIT_SECONDS", str(lock_wait))
    monkeypatch.setenv("BACKUP_MAX_RETRIES", "0")
    monkeypatch.setenv("RESTORE_CHECK_DATABASE_URL", f"{server_url}/postgres")


def seeded_database(make_database: Callable[..., str], hint: str) -> str:
    """A fresh database with a small table `t` for a dump to wait on; its URL."""
    url = make_database(hint)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 50)")
    return url


@contextlib.contextmanager
def tables_locked(urls: Iterable[str]) -> Iterator[Callable[[], None]]:
    """Table `t` of each database locked; call the result to let the dumps go."""
    holders: list[psycopg.Connection[Any]] = []

    def release() -> None:
        while holders:
            holder = holders.pop()
            holder.rollback()
            holder.close()

    try:
        for url in urls:
            conn = psycopg.connect(url)
            holders.append(conn)
            conn.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        yield release
    finally:
        release()


def waiting_on_lock(server_url: str, dbnames: Iterable[str]) -> set[str]:
    """Which of `dbnames` have a session (a dump) waiting on a lock."""
    with psycopg.connect(f"{server_url}/postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT DISTINCT datname FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = ANY(%s)",
            [list(dbnames)],
        ).fetchall()
    return {dbname for (dbname,) in rows}


def pool_limits(instance: DagsterInstance) -> dict[str, int]:
    """Each pool's limit as the instance reports it, default limits left out."""
    return {
        pool.name: pool.limit
        for pool in instance.event_log_storage.get_pool_limits()
        if not pool.from_default
    }


def slot_holders(instance: DagsterInstance, pool: str) -> set[str]:
    """The runs holding one of `pool`'s slots."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    return {slot.run_id for slot in info.claimed_slots}


def scheduled_runs(instance: DagsterInstance, schedule: str = SCHEDULE) -> list[DagsterRun]:
    return list(instance.get_runs(filters=RunsFilter(tags={"dagster/schedule_name": schedule})))


def failures(instance: DagsterInstance, runs: Iterable[DagsterRun]) -> list[str]:
    """Each run that did not succeed, with the first line of why."""
    found = []
    for run in runs:
        if run.status == DagsterRunStatus.SUCCESS:
            continue
        reasons = [
            entry.dagster_event.message or ""
            for entry in instance.all_logs(
                run.run_id,
                of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE},
            )
            if entry.dagster_event
        ]
        found.append(f"{run.tags.get(DATABASE_TAG)}: {run.status.value}: {reasons[:1]}")
    return found


def finished_runs(instance: DagsterInstance, count: int) -> list[DagsterRun] | None:
    """The tick's `count` runs once all are finished; a failure if the tick started more (a
    run retried: its first attempt's worker died)."""
    runs = scheduled_runs(instance)
    if len(runs) > count:
        described = sorted((r.tags.get(DATABASE_TAG), r.status.value) for r in runs)
        pytest.fail(
            f"one tick started {len(runs)} runs for {count}: {described}; "
            f"{failures(instance, runs)}",
            pytrace=False,
        )
    if len(runs) == count and all(run.status in TERMINAL for run in runs):
        return runs
    return None


def backup_step(run: DagsterRun) -> str:
    return f"backup__{run.tags[DATABASE_TAG]}".replace("-", "_")


def step_times(instance: DagsterInstance, run: DagsterRun) -> list[tuple[float, int]]:
    """(timestamp, +1) at the backup step's start and (timestamp, -1) at its success."""
    edges = []
    for entry in instance.all_logs(
        run.run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS}
    ):
        if entry.step_key != backup_step(run) or entry.dagster_event is None:
            continue
        started = entry.dagster_event.event_type == DagsterEventType.STEP_START
        edges.append((entry.timestamp, 1 if started else -1))
    return edges


def peak_concurrent_steps(instance: DagsterInstance, runs: Iterable[DagsterRun]) -> dict[str, int]:
    """Per server, the most backup steps between their STEP_START and STEP_SUCCESS at once."""
    edges: dict[str, list[tuple[float, int]]] = {}
    for run in runs:
        edges.setdefault(run.tags[SERVER_TAG], []).extend(step_times(instance, run))
    peaks = {}
    for server, points in edges.items():
        active = peak = 0
        # At one instant an end sorts before a start: a slot freed, then taken again.
        for _at, change in sorted(points):
            active += change
            peak = max(peak, active)
        peaks[server] = peak
    return peaks


def passed_checks(
    instance: DagsterInstance, runs: Iterable[DagsterRun]
) -> set[tuple[str, str, str | None]]:
    """(database, check, partition) of every check that passed in `runs`."""
    found = set()
    for run in runs:
        for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
            evaluation = entry.dagster_event.event_specific_data if entry.dagster_event else None
            if evaluation is not None and evaluation.passed:
                found.add((run.tags[DATABASE_TAG], evaluation.check_name, evaluation.partition))
    return found


def worker_pid(instance: DagsterInstance, run_id: str) -> int | None:
    """The pid of the run's worker process, from its "Started process for run" engine event."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        if match := _STARTED_PROCESS.search(entry.dagster_event.message or ""):
            return int(match.group(1))
    return None
