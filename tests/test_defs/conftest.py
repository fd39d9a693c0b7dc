"""Fixtures for the Dagster layer: a database to back up, alert capture, a test instance, and a
production server of its own whose databases a test can watch while a proof runs."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import psycopg
import pytest

from pgvault_assets.engine.basics.clock import latest_complete_day, utcnow
from pgvault_assets.engine.postgres.cluster import CLUSTER_PREFIX, start_cluster
from tests.conftest import AWKWARD_SCHEMA, load_sql_file
from tests.test_recovery.conftest import approvers, databases  # noqa: F401 (shared fixtures)


@pytest.fixture
def backup_env(local_env, awkward_database, monkeypatch) -> str:
    """pgvault on its embedded store, backing up the awkward database; returns its URL."""
    monkeypatch.setenv("DATABASE_URL", awkward_database)
    return awkward_database


@pytest.fixture
def yesterday() -> date:
    return latest_complete_day(utcnow())


@dataclass
class Watched:
    """What a watch saw while it ran: every database name on a server, every new cluster."""

    databases: set[str] = field(default_factory=set)
    clusters: set[Path] = field(default_factory=set)


def _databases(server_url: str) -> set[str]:
    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


@pytest.fixture
def own_tempdir(monkeypatch) -> Iterator[Path]:
    """A temp directory of this test's own, so the throwaway clusters `watching` sees are
    this test's, never those another suite on the machine starts meanwhile."""
    path = Path(tempfile.mkdtemp(prefix="pgv-", dir="/tmp"))  # short: sockets live below
    path.chmod(0o755)  # the clusters run as the postgres OS user
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _clusters() -> set[Path]:
    found = Path(tempfile.gettempdir()).glob(f"{CLUSTER_PREFIX}*")
    return {path for path in found if path.suffix != ".lock"}


@contextlib.contextmanager
def watching(server_url: str) -> Iterator[Watched]:
    """Poll `server_url`'s pg_database and the temp directory's throwaway clusters meanwhile."""
    seen = Watched()
    before = _clusters()
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.databases |= _databases(server_url)
            seen.clusters |= _clusters() - before
            done.wait(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield seen
    finally:
        done.set()
        poller.join(10)
        seen.databases |= _databases(server_url)


@dataclass(frozen=True)
class Production:
    """A production server of the test's own, so no other suite's databases blur the view."""

    server_url: str
    url: str

    def databases(self) -> set[str]:
        return _databases(self.server_url)


@pytest.fixture
def private_production(local_env, monkeypatch) -> Iterator[Production]:
    """DATABASE_URL is the awkward database on a private cluster of its own."""
    with start_cluster() as cluster:
        server_url = cluster.url.secret
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE app")
        url = cluster.url.with_dbname("app").secret
        load_sql_file(url, AWKWARD_SCHEMA)
        monkeypatch.setenv("DATABASE_URL", url)
        yield Production(server_url, url)
