"""Fixtures that cause faults for real: a network proxy that cuts or stalls S3 traffic and
pgvault run as a killable subprocess.

The shared test server on 127.0.0.1:5432 is never restarted: other suites use it at the same
time. Restart tests use the private cluster of tests/conftest.py (`private_postgres`).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from tests.conftest import AwsEnv
from tests.test_faults.proxy import FaultyProxy

REPO = Path(__file__).parents[2]


def fill(url: str, rows: int) -> None:
    """A table of `rows` poorly compressible rows: enough bytes for a stage to be hit."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE t AS SELECT i, md5(i::text) || md5((i * 7)::text) AS s "
                "FROM generate_series(1, {}) i"
            ).format(sql.Literal(rows))
        )


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


@pytest.fixture
def faulty_proxy(aws_env: AwsEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyProxy]:
    """pgvault's S3 and KMS traffic through a proxy the test can break; 2 s read timeout."""
    parts = urlsplit(aws_env.endpoint)
    assert parts.hostname and parts.port
    proxy = FaultyProxy((parts.hostname, parts.port))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.start())
    monkeypatch.setenv("BACKUP_S3_READ_TIMEOUT_SECONDS", "2")
    try:
        yield proxy
    finally:
        proxy.stop()


# --------------------------------------------------------------------------------------------
# pgvault as a process that can be killed
# --------------------------------------------------------------------------------------------


@dataclass
class Pgvault:
    """pgvault running a Python snippet in a child process, with its stderr read line by line."""

    proc: subprocess.Popen[bytes]
    stderr: list[str]

    def wait_for_pause(self, point: str, timeout: float = 60) -> None:
        """Block until the child reached `PGVAULT_TEST_PAUSE_AT=point` and sleeps there."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 0.2)
            if ready:
                line = self.proc.stderr.readline().decode(errors="replace")
                self.stderr.append(line)
                if line.strip() == f"pgvault: paused at {point}":
                    return
                if not line and self.proc.poll() is not None:
                    break
        raise AssertionError(f"pgvault never paused at {point}: {''.join(self.stderr)[-2000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        assert self.proc.returncode == -signal.SIGKILL


@pytest.fixture
def spawn_pgvault() -> Iterator[Callable[..., Pgvault]]:
    """Factory: run `code` (with the test's environment) as pgvault; killed at teardown."""
    started: list[Pgvault] = []

    def spawn(code: str, *args: str, pause_at: str | None = None) -> Pgvault:
        env = os.environ.copy()
        if pause_at:
            env["PGVAULT_TEST_PAUSE_AT"] = pause_at
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            env=env,
            cwd=REPO,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        started.append(Pgvault(proc, []))
        return started[-1]

    yield spawn
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
