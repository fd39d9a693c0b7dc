"""`pgvault backup` at a terminal fails at once with the reason; `--retries N` retries N times.

Someone at a terminal who typed a wrong port waits for the reason, not for minutes of
retries; cron and Dagster's schedule keep BACKUP_MAX_RETRIES (tests/test_defs/test_retry.py).
The terminal is a real pseudo-terminal on the CLI's stdin. Retries are counted from the run's
events and the CLI's own lines, never from the time it took.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance

from tests.conftest import PrivateCluster

PGVAULT = Path(sys.executable).with_name("pgvault")


def _refused_port() -> int:
    with socket.socket() as probe:  # nothing listens on it once closed
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _backup(url: str, *argv: str, terminal: bool) -> subprocess.CompletedProcess[str]:
    """`pgvault backup ARGV` of `url`, its stdin a pseudo-terminal when `terminal`."""
    controller, tty = os.openpty() if terminal else (None, None)
    try:
        return subprocess.run(
            [str(PGVAULT), "backup", *argv],
            env={**os.environ, "DATABASE_URL": url},
            stdin=tty if tty is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        for fd in (controller, tty):
            if fd is not None:
                os.close(fd)


def _retries_of_the_run() -> int:
    with DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
        return len(instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY))


@pytest.fixture
def retries_configured(local_env, monkeypatch) -> None:
    """Retries a cron run would make; short, so a test that wrongly retries still ends."""
    monkeypatch.setenv("BACKUP_MAX_RETRIES", "3")
    monkeypatch.setenv("BACKUP_RETRY_DELAY_SECONDS", "1")


@pytest.mark.parametrize(
    ("problem", "reason"),
    [
        ("refused", "accepting TCP/IP connections"),
        ("unknown host", "failed to resolve host"),
        ("bad password", "password authentication failed"),
    ],
)
def test_backup_at_a_terminal_fails_on_its_first_attempt_with_the_reason(
    retries_configured, request: pytest.FixtureRequest, problem: str, reason: str
) -> None:
    if problem == "refused":
        url = f"postgresql://app@127.0.0.1:{_refused_port()}/app"
    elif problem == "unknown host":
        url = "postgresql://app@pgvault-no-such-host.invalid:5432/app"
    else:
        cluster: PrivateCluster = request.getfixturevalue("private_postgres")
        url = cluster.url("postgres").replace("@127.0.0.1", "wrong@127.0.0.1")

    result = _backup(url, terminal=True)

    assert result.returncode == 1
    assert "attempt " not in result.stdout, "the backup was retried"
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert line.startswith("error: backup of ") and reason in line
    assert "Traceback" not in result.stderr
    assert _retries_of_the_run() == 0


def test_backup_with_retries_retries_that_many_times_even_at_a_terminal(
    retries_configured,
) -> None:
    result = _backup(
        f"postgresql://app@127.0.0.1:{_refused_port()}/app", "--retries", "1", terminal=True
    )

    assert result.returncode == 1
    said = [line for line in result.stdout.splitlines() if line.startswith("attempt ")]
    assert len(said) == 1 and said[0].startswith("attempt 1 failed: cannot connect to")
    assert _retries_of_the_run() == 1


def test_backup_without_a_terminal_keeps_the_configured_retries(retries_configured) -> None:
    """Cron has no terminal: its backups retry as BACKUP_MAX_RETRIES says."""
    result = _backup(f"postgresql://app@127.0.0.1:{_refused_port()}/app", terminal=False)

    assert result.returncode == 1
    assert _retries_of_the_run() == 3


def test_a_bad_retry_count_is_refused_in_one_line(local_env) -> None:
    result = _backup("postgresql://app@127.0.0.1:1/app", "--retries", "many", terminal=False)

    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "'many' is not a whole number of retries from 0 to 20" in line
