"""The fixtures themselves work, so a failing pgvault test points at pgvault, not the harness."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import boto3
import psycopg
from conftest import CLEARED_VARIABLES, AwsEnv
from dbcompare import database_snapshot

from tests.test_engine.helpers import TEST_NOW_VARIABLE

ROOT = Path(__file__).parent.parent


def test_no_variable_pgvault_reads_is_set_while_a_test_runs() -> None:
    assert sorted(CLEARED_VARIABLES & os.environ.keys()) == []
    assert os.environ["PGVAULT_HOME"].endswith("pgvault-home")  # the test's own, under tmp_path


def test_a_developers_pgvault_settings_never_reach_a_test() -> None:
    """The shell of the run sets every variable pgvault reads; the test above sees none."""
    shell = dict.fromkeys(CLEARED_VARIABLES, "from-the-developers-shell")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"),
            f"{__file__}::test_no_variable_pgvault_reads_is_set_while_a_test_runs",
        ],
        env={**os.environ, **shell, "PGVAULT_HOME": "/nonexistent/shell-home"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_a_child_started_after_midnight_means_the_day_of_the_run_that_started_it() -> None:
    """One clock per run: the run's instant is a second before midnight UTC, the child's own
    clock (shifted as scripts/test-dates.sh shifts it) already reads the next day."""
    pinned = datetime(2026, 12, 6, 23, 59, 59, tzinfo=UTC)
    code = (
        "from datetime import UTC, datetime; from tests.test_engine.helpers import DAY; "
        "print(datetime.now(UTC).date(), DAY)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={
            **os.environ,
            TEST_NOW_VARIABLE: pinned.isoformat(),
            "PGVAULT_TEST_TODAY": "2026-12-07",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "clock"), str(ROOT)]),
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    child_today, child_day = result.stdout.split()
    assert child_today == "2026-12-07"  # the child runs after the midnight
    assert date.fromisoformat(child_day) == date(2026, 12, 5)  # yet means the run's yesterday


def test_moto_answers_through_aws_endpoint_url_alone(aws_env: AwsEnv) -> None:
    # No endpoint_url argument: pgvault's own clients rely on boto3 reading AWS_ENDPOINT_URL.
    assert os.environ["AWS_ENDPOINT_URL"] == aws_env.endpoint
    s3 = boto3.client("s3")
    names = [bucket["Name"] for bucket in s3.list_buckets()["Buckets"]]
    assert aws_env.bucket in names
    versioning = s3.get_bucket_versioning(Bucket=aws_env.bucket)
    assert versioning["Status"] == "Enabled"

    kms = boto3.client("kms")
    described = kms.describe_key(KeyId=aws_env.kms_key_id)["KeyMetadata"]
    assert described["Arn"] == aws_env.kms_key_arn
    assert described["Enabled"]
    assert os.environ["BACKUP_S3_BUCKET"] == aws_env.bucket
    assert os.environ["BACKUP_KMS_KEY_ID"] == aws_env.kms_key_id
    assert "BACKUP_LOCAL_DIR" not in os.environ


def test_awkward_snapshot_equals_itself_and_sees_a_deleted_row(awkward_database: str) -> None:
    before = database_snapshot(awkward_database)
    assert before == database_snapshot(awkward_database)
    assert len(before["rows"]["public.users"]) == 120
    assert before["rows"]["public.pending_deletions"] == []
    assert before["sequences"]["public.users_id_seq"]["last_value"] == 1_000_000
    assert before["enums"]["public.mood"][-1] == "it's complicated"
    assert any(c["generated"] == "s" for c in before["tables"]["public.users"]["columns"])

    with psycopg.connect(awkward_database, autocommit=True) as conn:
        conn.execute("DELETE FROM audit.events WHERE id = (SELECT min(id) FROM audit.events)")
    after = database_snapshot(awkward_database)
    assert after != before
    assert len(after["rows"]["audit.events"]) == len(before["rows"]["audit.events"]) - 1
    assert {k: v for k, v in after.items() if k != "rows"} == {
        k: v for k, v in before.items() if k != "rows"
    }


def test_plain_dump_and_restore_gives_an_equal_snapshot(
    awkward_database: str, make_database: Callable[..., str]
) -> None:
    # Proves the snapshot ignores what a faithful restore legitimately changes (oids, names).
    target = make_database("copy")
    dump = subprocess.run(
        ["pg_dump", "--no-owner", "-d", awkward_database],
        capture_output=True,
        check=True,
        timeout=120,
    )
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", target],
        input=dump.stdout,
        capture_output=True,
        check=True,
        timeout=120,
    )
    assert database_snapshot(target) == database_snapshot(awkward_database)
