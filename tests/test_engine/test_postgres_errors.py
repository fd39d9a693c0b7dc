"""A PostgreSQL failure reads as what happened and what to do, from its SQLSTATE: a lost
connection, a permission, a missing object, a lock timeout, a full disk; each is a real
error from the test server except the full disk, which no test can cause safely."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from pgvault_assets.engine.postgres.postgres import connection_loss_raises
from pgvault_assets.errors import BackupFailed
from tests.conftest import MAINTENANCE_URL


def _failure(statement: str, url: str = MAINTENANCE_URL) -> str:
    with (
        pytest.raises(BackupFailed) as failed,
        connection_loss_raises(BackupFailed, "the backup", "nothing was recorded"),
        psycopg.connect(url, autocommit=True) as conn,
    ):
        conn.execute(statement)
    message = str(failed.value)
    assert "\n" not in message and message.endswith("; nothing was recorded")
    return message


def test_a_terminated_session_reads_as_a_lost_connection():
    message = _failure("SELECT pg_terminate_backend(pg_backend_pid())")
    assert message.startswith("the database connection was lost during the backup")


def test_a_missing_table_reads_as_a_missing_object():
    message = _failure("SELECT * FROM no_such_table_anywhere")
    assert message.startswith("an object the backup needs does not exist")
    assert "no_such_table_anywhere" in message


def test_a_statement_timeout_reads_as_a_lock_or_timeout():
    message = _failure("SET statement_timeout = 1; SELECT pg_sleep(1)")
    assert message.startswith("a lock or statement timeout ended the backup")


def test_a_denied_privilege_reads_as_a_permission(make_database):
    role = f"pgvault_test_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(MAINTENANCE_URL, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
    try:
        url = make_database("perm").replace("postgres@", f"{role}@")
        message = _failure("SELECT rolpassword FROM pg_authid", url)
        assert message.startswith("PostgreSQL denied a permission during the backup")
        assert "permission denied" in message
    finally:
        with psycopg.connect(MAINTENANCE_URL, autocommit=True) as admin:
            admin.execute(f"DROP ROLE {role}")


def test_a_full_disk_says_to_free_space():
    with (
        pytest.raises(BackupFailed) as failed,
        connection_loss_raises(BackupFailed, "the restore", "the target was left as it was"),
    ):
        raise psycopg.errors.DiskFull("could not extend file: No space left on device")
    assert str(failed.value).startswith(
        "the database server's disk is full during the restore: free space on it"
    )
