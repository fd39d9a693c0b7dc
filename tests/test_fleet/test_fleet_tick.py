"""One schedule tick through a real `dagster-daemon` on PostgreSQL storage backs up the fleet,
at most `max_concurrent_backups` dumps per server at once.

Nine small databases are declared on three servers (three variables naming the shared test
server: to pgvault they are three servers, each with its own pool). So that the pools are
what keeps dumps apart, not the dumps' speed, the test holds a lock on every database's table
until each server has as many dumps waiting on it as its limit lets in, then lets them all
go: the peak per server is then its limit exactly, and any dump past the limit would show.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from pgvault_assets.cli import main
from pgvault_assets.engine.fleet import pin_database
from pgvault_assets.engine.vault import Vault
from pgvault_assets.settings import load_settings
from tests.conftest import PG_SERVER_URL
from tests.test_fleet.helpers import write_fleet

REPO = Path(__file__).resolve().parents[2]
DAEMON = str(Path(sys.executable).with_name("dagster-daemon"))
LOCATION = Path(__file__).with_name("fleet_location.py")
# server -> (databases, limit); "big" is the biggest server.
SERVERS = {"big": (4, 3), "mid": (3, 2), "small": (2, 2)}
SCHEDULE = "fleet_backup_schedule_02"
EVERY_CHECK = ("checksum_matches", "decrypts_fully", "duration_within_average", "size_not_shrunk")
TERMINAL = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
DEADLINE = timedelta(minutes=8)


def wait_for(
    condition: Callable[[], Any], what: str, deadline: datetime, log: Path | None = None
) -> Any:
    while datetime.now(UTC) < deadline:
        if result := condition():
            return result
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}", pytrace=False)


def _away_from_midnight() -> bool:
    """A tick just before midnight UTC would name a day its run, just after, may not back up."""
    now = datetime.now(UTC)
    return not (now.hour == 23 and now.minute >= 55)


@pytest.fixture
def fleet(local_env, make_database, monkeypatch) -> dict[str, tuple[str, str]]:
    """The nine databases, each with a table; fleet name -> (server, URL)."""
    databases: dict[str, tuple[str, str]] = {}
    for server, (count, _limit) in SERVERS.items():
        for i in range(count):
            url = make_database(f"{server}{i}")
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 50)")
            databases[f"{server}-{i}"] = (server, url)
    write_fleet(
        local_env,
        monkeypatch,
        servers={s: (f"{PG_SERVER_URL}/postgres", limit) for s, (_n, limit) in SERVERS.items()},
        databases={name: (s, url.rsplit("/", 1)[1]) for name, (s, url) in databases.items()},
    )
    # Dumps wait on the test's locks far longer than a production default would allow.
    monkeypatch.setenv("BACKUP_LOCK_WAIT_SECONDS", "900")
    monkeypatch.setenv("BACKUP_MAX_RETRIES", "0")
    return databases


@pytest.fixture
def instance_home(local_env, make_database, monkeypatch) -> Path:
    """The production dagster.yaml on a PostgreSQL database of its own, telemetry off."""
    home = local_env / "production_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_URL", make_database("dagster"))
    workspace = {
        "load_from": [
            {
                "python_file": {
                    "relative_path": str(LOCATION),
                    "working_directory": str(REPO),
                    "location_name": "pgvault_fleet",
                }
            }
        ]
    }
    (home / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    return home


@pytest.fixture
def locked(fleet) -> Iterator[Callable[[], None]]:
    """Every database's table locked; call the result to let the dumps go."""
    holders = []
    for _server, url in fleet.values():
        conn = psycopg.connect(url)
        conn.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        holders.append(conn)

    def release() -> None:
        while holders:
            holder = holders.pop()
            holder.rollback()
            holder.close()

    yield release
    release()


@contextlib.contextmanager
def started_daemon(home: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`dagster-daemon run` in a session of its own (with the code server and run workers it
    starts), ended with them at the block's end."""
    with (home / "daemon.log").open("wb") as log:
        process = subprocess.Popen(
            [DAEMON, "run", "-w", str(home / "workspace.yaml")],
            cwd=home,
            env=dict(os.environ),
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


def _waiting_dumps(fleet: dict[str, tuple[str, str]]) -> dict[str, int]:
    """How many of each server's databases have a session waiting on the test's lock."""
    dbnames = {url.rsplit("/", 1)[1]: server for server, url in fleet.values()}
    with psycopg.connect(f"{PG_SERVER_URL}/postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT DISTINCT datname FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = ANY(%s)",
            [list(dbnames)],
        ).fetchall()
    counts = dict.fromkeys(SERVERS, 0)
    for (dbname,) in rows:
        counts[dbnames[dbname]] += 1
    return counts


def _peak_concurrent_steps(instance: DagsterInstance, runs: list[Any]) -> dict[str, int]:
    """Per server, the most backup steps between their STEP_START and STEP_SUCCESS at once."""
    edges: dict[str, list[tuple[float, int]]] = {server: [] for server in SERVERS}
    for run in runs:
        server = run.tags["pgvault/server"]
        backup_step = f"backup__{run.tags['pgvault/database']}".replace("-", "_")
        for entry in instance.all_logs(
            run.run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS}
        ):
            if entry.step_key != backup_step:
                continue
            started = entry.dagster_event.event_type == DagsterEventType.STEP_START
            # At one instant an end sorts before a start: a slot freed, then taken again.
            edges[server].append((entry.timestamp, 1 if started else -1))
    peaks = {}
    for server, points in edges.items():
        active = peak = 0
        for _at, change in sorted(points):
            active += change
            peak = max(peak, active)
        peaks[server] = peak
    return peaks


@pytest.mark.external_clock
def test_one_tick_backs_up_every_database_within_each_server_limit(
    fleet, instance_home, locked, capsys
):
    deadline = datetime.now(UTC) + DEADLINE
    wait_for(_away_from_midnight, "the clock to leave the minutes before midnight UTC", deadline)
    assert main(["fleet", "apply-limits"]) == 0  # explicit before the first tick
    capsys.readouterr()

    with started_daemon(instance_home):
        expected = {s: min(limit, count) for s, (count, limit) in SERVERS.items()}
        wait_for(
            lambda: all(n >= expected[s] for s, n in _waiting_dumps(fleet).items()),
            f"each server's dumps to fill its pool ({expected})",
            deadline,
            instance_home / "daemon.log",
        )
        locked()
        with DagsterInstance.get() as instance:
            runs = wait_for(
                lambda: _finished_runs(instance, len(fleet)),
                f"{len(fleet)} runs of one tick to finish",
                deadline,
                instance_home / "daemon.log",
            )
            peaks = _peak_concurrent_steps(instance, runs)
            failures = _failures(instance, runs)
            checks = {
                (run.tags["pgvault/database"], entry.dagster_event.event_specific_data.check_name)
                for run in runs
                for entry in instance.all_logs(
                    run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION
                )
                if entry.dagster_event.event_specific_data.passed
            }

    assert not failures, failures
    assert sorted(run.tags["pgvault/database"] for run in runs) == sorted(fleet)
    days = {run.tags["dagster/partition"] for run in runs}
    assert len(days) == 1
    for server, (_count, limit) in SERVERS.items():
        assert peaks[server] <= limit, peaks
    assert peaks["big"] == SERVERS["big"][1], peaks
    assert checks == {(name, check) for name in fleet for check in EVERY_CHECK}

    settings = load_settings()
    for name in fleet:
        backed_up = Vault.from_settings(pin_database(settings, os.environ, name)).backup_dates()
        assert [day.isoformat() for day in backed_up] == list(days)


def _failures(instance: DagsterInstance, runs: list[Any]) -> list[str]:
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
        ]
        found.append(f"{run.tags.get('pgvault/database')}: {run.status.value}: {reasons[:1]}")
    return found


def _finished_runs(instance: DagsterInstance, count: int) -> list[Any] | None:
    runs = instance.get_runs(filters=RunsFilter(tags={"dagster/schedule_name": SCHEDULE}))
    if len(runs) > count:  # a run retried: its first attempt's worker died
        described = sorted((r.tags.get("pgvault/database"), r.status.value) for r in runs)
        pytest.fail(
            f"one tick started {len(runs)} runs for {count}: {described}; "
            f"{_failures(instance, runs)}",
            pytrace=False,
        )
    if len(runs) == count and all(run.status in TERMINAL for run in runs):
        return runs
    return None
