"""One schedule tick through a real `dagster-daemon` on PostgreSQL storage backs up the fleet
at the issue's size, at most `max_concurrent_backups` dumps per server at once.

Twenty small databases are declared on three servers of limit 3 (9/6/5 databases; three
variables naming the shared test server: to pgvault they are three servers, each with its own
pool). So that the pools are what keeps dumps apart, not the dumps' speed, the test holds a
lock on every database's table until each server has as many dumps waiting on it as its limit
lets in, then lets them all go: the peak per server is then its limit exactly, and any dump
past the limit would show. The schedule ticks at a minute already past, which the daemon
catches up as soon as it is ready (`daemon.tick_caught_up_at_start`), not at a future whole
minute that idled 1 to 2 of the 3 min 40 s the test took on a loaded 2-core machine.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance

from pgvault_assets.cli import main
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.fleet import RESTORE_PROOF_POOL, pin_database, pool_name
from pgvault_assets.settings import load_settings
from tests.conftest import PG_SERVER_URL
from tests.test_fleet import daemon
from tests.test_fleet.helpers import write_fleet

# server -> (databases, limit); "big" is the biggest server.
SERVERS = {"big": (9, 3), "mid": (6, 3), "small": (5, 3)}
DEADLINE = timedelta(minutes=20)


@pytest.fixture
def fleet(local_env, make_database, monkeypatch) -> dict[str, tuple[str, str]]:
    """The twenty databases, each with a table; fleet name -> (server, URL)."""
    databases: dict[str, tuple[str, str]] = {}
    for server, (count, _limit) in SERVERS.items():
        for i in range(count):
            databases[f"{server}-{i}"] = (server, daemon.seeded_database(make_database, server))
    write_fleet(
        local_env,
        monkeypatch,
        servers={s: (f"{PG_SERVER_URL}/postgres", limit) for s, (_n, limit) in SERVERS.items()},
        databases={name: (s, url.rsplit("/", 1)[1]) for name, (s, url) in databases.items()},
    )
    daemon.runs_the_test_holds(monkeypatch, PG_SERVER_URL, lock_wait=1200)
    return databases


@pytest.fixture
def instance_home(local_env, make_database, monkeypatch) -> Path:
    """The production dagster.yaml, unchanged, on a PostgreSQL database of its own."""
    return daemon.production_home(
        local_env / "production_home", make_database("dagster"), monkeypatch
    )


def _waiting_per_server(fleet: dict[str, tuple[str, str]]) -> dict[str, int]:
    """How many of each server's databases have a dump waiting on the test's lock."""
    server_of = {url.rsplit("/", 1)[1]: server for server, url in fleet.values()}
    counts = dict.fromkeys(SERVERS, 0)
    for dbname in daemon.waiting_on_lock(PG_SERVER_URL, server_of):
        counts[server_of[dbname]] += 1
    return counts


@pytest.mark.external_clock
def test_one_tick_backs_up_twenty_databases_within_each_server_limit(
    fleet, instance_home, monkeypatch, capsys
):
    deadline = datetime.now(UTC) + DEADLINE
    daemon.wait_for(daemon.away_from_midnight, "the clock to leave 23:55-24:00 UTC", deadline)
    daemon.tick_caught_up_at_start(instance_home, monkeypatch)
    assert main(["fleet", "apply-limits"]) == 0  # explicit before the first tick
    capsys.readouterr()
    with DagsterInstance.get() as instance:
        assert daemon.pool_limits(instance) == {
            **{pool_name(server): limit for server, (_count, limit) in SERVERS.items()},
            RESTORE_PROOF_POOL: 1,
        }

    log = instance_home / "daemon.log"
    with (
        daemon.tables_locked(url for _server, url in fleet.values()) as release,
        daemon.started_daemon(instance_home),
    ):
        expected = {s: min(limit, count) for s, (count, limit) in SERVERS.items()}
        daemon.wait_for(
            lambda: all(n >= expected[s] for s, n in _waiting_per_server(fleet).items()),
            f"each server's dumps to fill its pool ({expected})",
            deadline,
            log,
        )
        release()
        with DagsterInstance.get() as instance:
            runs = daemon.wait_for(
                lambda: daemon.finished_runs(instance, len(fleet)),
                f"{len(fleet)} runs of one tick to finish",
                deadline,
                log,
            )
            peaks = daemon.peak_concurrent_steps(instance, runs)
            failures = daemon.failures(instance, runs)
            checks = daemon.passed_checks(instance, runs)

    assert not failures, failures
    assert sorted(run.tags[daemon.DATABASE_TAG] for run in runs) == sorted(fleet)
    days = {run.tags["dagster/partition"] for run in runs}
    assert len(days) == 1
    (day,) = days
    # Every server's pool was full while the locks held; none let a dump past its limit.
    assert peaks == {server: limit for server, (_count, limit) in SERVERS.items()}, peaks
    assert checks == {(name, check, day) for name in fleet for check in daemon.EVERY_CHECK}

    settings = load_settings()
    for name in fleet:
        backed_up = Vault.from_settings(pin_database(settings, os.environ, name)).backup_dates()
        assert [d.isoformat() for d in backed_up] == [day]
