"""A full disk, a disabled key, a missing bucket, an old pg_dump: one clear line, nothing half-written."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from pgvault_assets.engine.postgres.postgres import check_tool_fits_server
from pgvault_assets.errors import BackupFailed, ConfigError, KeyUnavailable, StoreError
from tests.conftest import MAINTENANCE_URL
from tests.test_engine.helpers import back_up, vault


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 1 MiB tmpfs: a real ENOSPC, not a simulated one."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_local_disk_fails_clearly_and_leaves_no_partial_file(
    local_env, make_database, tiny_disk, monkeypatch
):
    url = make_database("big")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t AS SELECT i, md5(i::text) AS s FROM generate_series(1, 200000) i"
        )
    monkeypatch.setenv("BACKUP_LOCAL_DIR", str(tiny_disk / "store"))

    with pytest.raises(StoreError, match="disk is full"):
        back_up(url)

    leftovers = [
        p for p in (tiny_disk / "store").rglob("*") if p.is_file() and ".locks" not in p.parts
    ]
    assert leftovers == []
    assert vault().list_manifests() == []


def test_disabled_kms_key_is_named_in_one_line(aws_env, awkward_database):
    aws_env.kms.disable_key(KeyId=aws_env.kms_key_arn.rsplit("/", 1)[1])
    with pytest.raises(KeyUnavailable) as caught:
        back_up(awkward_database)
    assert aws_env.kms_key_id in str(caught.value) and "Disabled" in str(caught.value)


def test_unknown_kms_key_names_the_permissions_to_check(aws_env, awkward_database, monkeypatch):
    monkeypatch.setenv("BACKUP_KMS_KEY_ID", f"alias/missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(KeyUnavailable, match="kms:GenerateDataKey"):
        back_up(awkward_database)


def test_missing_bucket_says_what_to_check(aws_env, awkward_database, monkeypatch):
    monkeypatch.setenv("BACKUP_S3_BUCKET", f"pgvault-missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(StoreError, match=r"NoSuchBucket.*BACKUP_S3_BUCKET"):
        back_up(awkward_database)


def test_backup_failing_midway_through_an_s3_upload_aborts_it(aws_env, make_database):
    url = make_database("big")
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t AS SELECT i, md5(i::text) AS s FROM generate_series(1, 2000000) i"
        )
    stop = threading.Event()
    killed = threading.Event()

    def kill_pg_dump_once_a_part_is_uploaded() -> None:
        with psycopg.connect(MAINTENANCE_URL, autocommit=True) as conn:
            while not stop.is_set():
                for upload in aws_env.s3.list_multipart_uploads(Bucket=aws_env.bucket).get(
                    "Uploads", []
                ):
                    parts = aws_env.s3.list_parts(
                        Bucket=aws_env.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    if parts.get("Parts"):
                        conn.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = 'pg_dump' AND datname = %s",
                            (name,),
                        )
                        killed.set()
                        return
                time.sleep(0.02)

    killer = threading.Thread(target=kill_pg_dump_once_a_part_is_uploaded)
    killer.start()
    try:
        with pytest.raises(BackupFailed):
            back_up(url)
    finally:
        stop.set()
        killer.join()

    assert killed.is_set(), "pg_dump finished before a part was uploaded"
    assert aws_env.s3.list_multipart_uploads(Bucket=aws_env.bucket).get("Uploads", []) == []
    assert aws_env.s3.list_objects_v2(Bucket=aws_env.bucket).get("KeyCount", 0) == 0
    assert vault().list_manifests() == []


def test_pg_dump_older_than_the_server_is_refused():
    with pytest.raises(ConfigError, match="older than the server"):
        check_tool_fits_server("pg_dump", 99)


def test_a_rerun_on_an_unversioned_bucket_is_refused_and_the_backup_stays_whole(
    aws_env, awkward_database, monkeypatch
):
    from pgvault_assets.engine.restore.verify import verify_backup
    from tests.test_engine.helpers import DAY

    bucket = f"pgvault-unversioned-{uuid.uuid4().hex[:12]}"
    aws_env.s3.create_bucket(Bucket=bucket)
    monkeypatch.setenv("BACKUP_S3_BUCKET", bucket)
    first = back_up(awkward_database)

    with pytest.raises(BackupFailed, match="has no versioning, so a re-run would overwrite"):
        back_up(awkward_database)
    assert verify_backup(vault(), DAY, full=True).sha256 == first.sha256
    assert aws_env.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
