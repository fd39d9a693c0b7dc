"""A SIGKILLed run worker gives its server's slot back, and the next database's backup runs.

One server of limit 1 and two databases, under a real `dagster-daemon` on PostgreSQL storage.
The test holds both tables locked, so whichever backup takes the slot first waits in its dump;
it SIGKILLs that run's worker (the pid from the run's "Started process for run" event). The
code server that started the worker fails the run; the slot stays with the dead run until the
monitoring daemon frees it `free_slots_after_run_end_seconds` after the run ended; then the
other database's backup runs and succeeds. dagster.yaml is the repo's with only two timing
values shortened in the test's copy: `free_slots_after_run_end_seconds` (300 -> 10) and
`poll_interval_seconds` (Dagster's default 120 -> 2). `run_retries` is left on, so the killed
run is retried: its retry must succeed too.
"""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from pgvault_assets.cli import main
from pgvault_assets.fleet import RESTORE_PROOF_POOL, pool_name
from tests.conftest import PG_SERVER_URL
from tests.test_fleet import daemon
from tests.test_fleet.helpers import write_fleet

FREE_AFTER_SECONDS = 10
POOL = pool_name("solo")
DEADLINE = timedelta(minutes=10)


@pytest.fixture
def fleet(local_env, make_database, monkeypatch) -> dict[str, str]:
    """Databases a and b on the server `solo` of limit 1; fleet name -> URL."""
    urls = {name: daemon.seeded_database(make_database, name) for name in ("a", "b")}
    write_fleet(
        local_env,
        monkeypatch,
        servers={"solo": (f"{PG_SERVER_URL}/postgres", 1)},
        databases={name: ("solo", url.rsplit("/", 1)[1]) for name, url in urls.items()},
    )
    daemon.runs_the_test_holds(monkeypatch, PG_SERVER_URL, lock_wait=900)
    return urls


@pytest.fixture
def instance_home(local_env, make_database, monkeypatch) -> Path:
    return daemon.production_home(
        local_env / "production_home",
        make_database("dagster"),
        monkeypatch,
        timing={
            "run_monitoring": {
                "free_slots_after_run_end_seconds": FREE_AFTER_SECONDS,
                "poll_interval_seconds": 2,
            }
        },
    )


def _runs_of(instance: DagsterInstance, database: str) -> list:
    return list(instance.get_runs(filters=RunsFilter(tags={daemon.DATABASE_TAG: database})))


@pytest.mark.external_clock
def test_a_killed_run_worker_frees_its_slot_and_the_next_database_is_backed_up(
    fleet, instance_home, monkeypatch, capsys
):
    deadline = datetime.now(UTC) + DEADLINE
    daemon.wait_for(daemon.away_from_midnight, "the clock to leave 23:55-24:00 UTC", deadline)
    daemon.tick_caught_up_at_start(instance_home, monkeypatch)
    assert main(["fleet", "apply-limits"]) == 0
    capsys.readouterr()
    log = instance_home / "daemon.log"

    with (
        daemon.tables_locked(fleet.values()) as release,
        daemon.started_daemon(instance_home) as started,
        DagsterInstance.get() as instance,
    ):
        assert daemon.pool_limits(instance) == {POOL: 1, RESTORE_PROOF_POOL: 1}
        dbnames = {url.rsplit("/", 1)[1] for url in fleet.values()}
        daemon.wait_for(
            lambda: daemon.waiting_on_lock(PG_SERVER_URL, dbnames),
            "the first backup's dump to wait on the test's lock",
            deadline,
            log,
        )
        (holder,) = daemon.slot_holders(instance, POOL)
        killed = instance.get_run_by_id(holder)
        first = killed.tags[daemon.DATABASE_TAG]
        second = "b" if first == "a" else "a"
        (waiting,) = _runs_of(instance, second)
        assert waiting.status == DagsterRunStatus.QUEUED  # the pool holds it back
        pid = daemon.wait_for(
            lambda: daemon.worker_pid(instance, holder), "the run worker's pid", deadline, log
        )
        assert os.getsid(pid) == started.pid  # a process of the test's own daemon
        os.kill(pid, signal.SIGKILL)
        release()

        ended = daemon.wait_for(
            lambda: _finished(instance, holder), "the killed run to be failed", deadline, log
        )
        assert ended.dagster_run.status == DagsterRunStatus.FAILURE
        done = daemon.wait_for(
            lambda: _all_finished(instance), "every run (and retry) to finish", deadline, log
        )
        (after,) = _runs_of(instance, second)
        next_start = min(at for at, change in daemon.step_times(instance, after) if change > 0)
        (retry,) = [r for r in done if r.tags.get(daemon.PARENT_RUN_TAG) == holder]

    assert after.status == DagsterRunStatus.SUCCESS, daemon.failures(instance, [after])
    # The dead run kept the slot until the monitoring daemon freed it, not a moment less.
    assert next_start >= ended.end_time + FREE_AFTER_SECONDS
    # run_retries (on in dagster.yaml) restarts a run whose worker died; the retry backs up.
    assert retry.status == DagsterRunStatus.SUCCESS, daemon.failures(instance, [retry])
    assert retry.tags[daemon.DATABASE_TAG] == first


def _finished(instance: DagsterInstance, run_id: str):
    (record,) = instance.get_run_records(filters=RunsFilter(run_ids=[run_id]))
    return record if record.dagster_run.status in daemon.TERMINAL else None


def _all_finished(instance: DagsterInstance):
    """Every run once all are finished, the killed run's retry among them."""
    runs = list(instance.get_runs())
    retried = any(run.tags.get(daemon.PARENT_RUN_TAG) for run in runs)
    if retried and all(run.status in daemon.TERMINAL for run in runs):
        return runs
    return None
