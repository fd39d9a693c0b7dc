"""The backup asset's retry policy, exercised for real: a genuine fault fails the first attempt.

Dagster's in-process executor (what `materialize` runs) honours the step's `RetryPolicy`: it
emits STEP_UP_FOR_RETRY, waits the backoff, then STEP_RESTARTED. The asset is built with
the single database's backup from the same `platform_section` production uses, with the backoff cut
to a tenth of a second; everything else (pg_dump, the store, moto behind a TCP proxy that
resets connections, Sentry check-ins over HTTP) is the real thing.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from datetime import date, timedelta
from urllib.parse import urlsplit

import psycopg
import pytest
from botocore.config import Config
from dagster import (
    Backoff,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    ExecuteInProcessResult,
    Jitter,
    materialize,
)

from pgvault_assets.cli import main
from pgvault_assets.defs.history import failed_backup_runs
from pgvault_assets.defs.naming import BACKUP_KEY
from pgvault_assets.defs.resources import resource_defs
from pgvault_assets.engine.basics.clock import utcnow
from pgvault_assets.engine.basics.names import server_context_key
from pgvault_assets.engine.restore.verify import verify_backup
from pgvault_assets.engine.storage.store import s3 as s3_store
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.settings import PlatformSettings, load_settings, platform_section
from test_defs.http_capture import Captured
from test_defs.run_failure import sense_run_failure
from tests.conftest import MAINTENANCE_URL, AwsEnv
from tests.test_defs.single import backup_with
from tests.test_faults.conftest import fill, wait_for
from tests.test_faults.proxy import Fault, FaultyProxy

MAX_RETRIES = 2
RETRYING = {"BACKUP_MAX_RETRIES": str(MAX_RETRIES), "BACKUP_RETRY_DELAY_SECONDS": "0.1"}
retrying_backup = backup_with(platform_section(RETRYING))
ROWS = 100_000  # about 4 MB stored: its upload crosses the proxy's 1 MiB cut
MIB = 1024 * 1024
BOTO_RETRIES = 1  # botocore's own retries of a request (its `max_attempts` excludes the first)
CUTS_PER_ATTEMPT = BOTO_RETRIES + 1  # what it takes for one step attempt to see the error
SECRET = "s3cret-pw"


@pytest.fixture
def s3_proxy(
    aws_env: AwsEnv, make_database, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultyProxy]:
    """pgvault's S3 and KMS traffic through a proxy the test can break, backing up ~4 MB."""
    source = make_database("retry")
    fill(source, ROWS)
    monkeypatch.setenv("DATABASE_URL", source)
    monkeypatch.setattr(
        s3_store,
        "BOTO_CONFIG",
        s3_store.BOTO_CONFIG.merge(
            Config(retries={"mode": "standard", "max_attempts": BOTO_RETRIES})
        ),
    )
    parts = urlsplit(aws_env.endpoint)
    assert parts.hostname and parts.port
    proxy = FaultyProxy((parts.hostname, parts.port))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.start())
    try:
        yield proxy
    finally:
        proxy.stop()


def _back_up(instance: DagsterInstance, day: date) -> ExecuteInProcessResult:
    return materialize(
        [retrying_backup],
        instance=instance,
        resources=resource_defs(),
        partition_key=day.isoformat(),
        raise_on_error=False,
    )


def _events(result: ExecuteInProcessResult, kind: DagsterEventType) -> list[DagsterEvent]:
    return [e for e in result.all_events if e.event_type == kind]


def _retry_reasons(result: ExecuteInProcessResult) -> list[str]:
    """Why each retried attempt failed, as the step's Failure described it."""
    reasons = []
    for event in _events(result, DagsterEventType.STEP_UP_FOR_RETRY):
        error = event.event_specific_data.error
        reasons.append(error.cause.message if error.cause else error.message)
    return reasons


def _checkin_statuses(captured: Captured) -> list[str]:
    checkins = captured.checkins()
    assert len({c["check_in_id"] for c in checkins}) == 1  # one monitor run for all attempts
    return [c["status"] for c in checkins]


def _s3_left_nothing_partial(aws_env: AwsEnv, object_key: str, versions: int) -> None:
    assert aws_env.s3.list_multipart_uploads(Bucket=aws_env.bucket).get("Uploads", []) == []
    listed = aws_env.s3.list_object_versions(Bucket=aws_env.bucket, Prefix=object_key)
    assert len(listed.get("Versions", [])) == versions


@pytest.fixture
def lock_held_by_a_migration(backup_env: str) -> Iterator[psycopg.Connection]:
    """An open transaction holding ACCESS EXCLUSIVE on a table, so pg_dump waits, connected."""
    conn = psycopg.connect(backup_env)
    conn.execute("LOCK TABLE public.users IN ACCESS EXCLUSIVE MODE")
    try:
        yield conn
    finally:
        conn.close()


def test_a_dump_whose_backend_is_terminated_is_retried_and_the_second_attempt_is_the_backup(
    backup_env, lock_held_by_a_migration, instance, yesterday, alerts_captured, local_env
):
    dbname = urlsplit(backup_env).path.lstrip("/")
    terminated: list[int] = []

    def terminate_the_first_pg_dump() -> None:
        def pg_dump_waiting() -> bool:
            rows = admin.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name = 'pg_dump' "
                "AND wait_event_type = 'Lock'",
                (dbname,),
            ).fetchall()
            terminated.extend(pid for pid, done in rows if done)
            return bool(terminated)

        try:
            with psycopg.connect(MAINTENANCE_URL, autocommit=True) as admin:
                wait_for(pg_dump_waiting, "pg_dump waiting on the migration's lock")
        finally:
            lock_held_by_a_migration.rollback()  # the migration ends; the retry is unhindered

    watcher = threading.Thread(target=terminate_the_first_pg_dump)
    watcher.start()
    result = _back_up(instance, yesterday)
    watcher.join(60)

    assert result.success
    assert len(terminated) == 1
    assert len(_events(result, DagsterEventType.STEP_UP_FOR_RETRY)) == 1
    assert len(_events(result, DagsterEventType.STEP_RESTARTED)) == 1
    (reason,) = _retry_reasons(result)
    assert "pg_dump failed (error: " in reason and "terminating connection" in reason
    vault = Vault.from_settings(load_settings())
    (manifest,) = vault.list_manifests()
    assert manifest.date == yesterday and manifest.table_rows["public.users"] > 0
    (materialization,) = result.asset_materializations_for_node("database_backup")
    assert materialization.metadata["sha256"].value == manifest.sha256
    assert verify_backup(vault, yesterday, full=True).sha256 == manifest.sha256
    assert {o.key for o in vault.store.list(f"test/{yesterday.isoformat()}/")} == {
        vault.manifest_key(yesterday),
        vault.object_key(yesterday),
        server_context_key("test", yesterday),
    }
    assert not list((local_env / "store").rglob(".*partial*"))
    assert _checkin_statuses(alerts_captured) == ["in_progress", "in_progress", "ok"]
    assert alerts_captured.events() == [] and alerts_captured.posts("/hook") == []


def test_an_upload_cut_on_the_first_attempt_is_retried_and_leaves_one_complete_object(
    s3_proxy, aws_env, instance, yesterday
):
    s3_proxy.fault = Fault("upload", "cut", after_bytes=MIB, faults=CUTS_PER_ATTEMPT)

    result = _back_up(instance, yesterday)

    assert result.success
    assert s3_proxy.broken == CUTS_PER_ATTEMPT  # botocore gave up; the step failed once
    assert len(_events(result, DagsterEventType.STEP_UP_FOR_RETRY)) == 1
    assert len(_events(result, DagsterEventType.STEP_RESTARTED)) == 1
    (reason,) = _retry_reasons(result)
    assert "S3 upload of" in reason
    vault = Vault.from_settings(load_settings())
    (manifest,) = vault.list_manifests()
    assert manifest.date == yesterday and manifest.table_rows == {"public.t": ROWS}
    assert verify_backup(vault, yesterday, full=True).sha256 == manifest.sha256
    _s3_left_nothing_partial(aws_env, vault.object_key(yesterday), versions=1)


def test_a_fault_through_every_retry_fails_the_run_and_is_reported_once_after_the_last(
    s3_proxy, aws_env, instance, yesterday, alerts_captured
):
    s3_proxy.fault = Fault("upload", "cut", after_bytes=MIB, faults=-1)

    result = _back_up(instance, yesterday)

    assert not result.success
    assert s3_proxy.broken == CUTS_PER_ATTEMPT * (MAX_RETRIES + 1)  # every attempt hit the fault
    assert len(_events(result, DagsterEventType.STEP_UP_FOR_RETRY)) == MAX_RETRIES
    assert len(_events(result, DagsterEventType.STEP_RESTARTED)) == MAX_RETRIES
    (failure,) = _events(result, DagsterEventType.STEP_FAILURE)
    assert failure.step_failure_data.user_failure_data.description.startswith("S3 upload of")
    vault = Vault.from_settings(load_settings())
    assert vault.list_manifests() == []
    _s3_left_nothing_partial(aws_env, vault.object_key(yesterday), versions=0)
    # The monitor run closes as an error once, from the attempt Dagster does not retry.
    assert _checkin_statuses(alerts_captured) == ["in_progress"] * (MAX_RETRIES + 1) + ["error"]
    assert alerts_captured.events() == [] and alerts_captured.posts("/hook") == []

    assert len(_events(result, DagsterEventType.RUN_FAILURE)) == 1
    assert sense_run_failure(instance, result.run_id)
    (post,) = alerts_captured.posts("/hook")
    assert (post["alert"], post["level"]) == ("upload_failing", "fatal")
    assert f"backup of {yesterday.isoformat()} failed after all retries: S3 upload" in post["text"]
    (event,) = alerts_captured.events()
    assert event["tags"]["alert"] == "upload_failing" and event["level"] == "fatal"
    (failed,) = failed_backup_runs(
        instance, BACKUP_KEY, utcnow() - timedelta(days=1), environment="test", database=None
    )
    assert failed.day == yesterday and failed.reason.startswith("S3 upload of")


def test_production_backups_retry_three_times_a_minute_apart_then_exponentially():
    policy = backup_with(PlatformSettings()).op.retry_policy
    assert (policy.max_retries, policy.delay, policy.backoff, policy.jitter) == (
        3,
        60,
        Backoff.EXPONENTIAL,
        Jitter.PLUS_MINUS,
    )


def test_a_database_that_refuses_for_good_fails_at_once_without_retrying(
    local_env, instance, alerts_captured, yesterday, monkeypatch
) -> None:
    """No such database: the server answered, so waiting minutes between retries cannot help."""
    monkeypatch.setenv("DATABASE_URL", f"{MAINTENANCE_URL.rsplit('/', 1)[0]}/pgvault_test_absent")
    result = _back_up(instance, yesterday)

    assert not result.success
    assert _events(result, DagsterEventType.STEP_UP_FOR_RETRY) == []
    (failure,) = _events(result, DagsterEventType.STEP_FAILURE)
    description = failure.step_failure_data.user_failure_data.description
    assert 'database "pgvault_test_absent" does not exist' in description
    assert "retrying will not help" in description and "\n" not in description
    assert _checkin_statuses(alerts_captured) == ["in_progress", "error"]


def test_cli_backup_says_each_failed_attempt_and_when_the_next_comes(
    local_env, monkeypatch, capsys
) -> None:
    """A server that refuses connections: each retried attempt is one line as it fails, with
    the time of the next; the last one's failure is the one error line, with no trace."""
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{SECRET}@127.0.0.1:{port}/app")
    for name, value in RETRYING.items():
        monkeypatch.setenv(name, value)

    code = main(["backup"])

    out, err = capsys.readouterr()
    assert code != 0
    said = [line for line in out.splitlines() if line.startswith("attempt ")]
    assert len(said) == MAX_RETRIES
    for attempt, line in enumerate(said, start=1):
        assert re.fullmatch(
            rf"attempt {attempt} failed: cannot connect to postgresql://app@127\.0\.0\.1:{port}/app"
            r" \(.*\); .*; retrying at \d\d:\d\d:\d\d UTC \(in \d+ s\)",
            line,
        ), line
    (error,) = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "failed: cannot connect to" in error
    assert "Traceback" not in out + err and SECRET not in out + err
