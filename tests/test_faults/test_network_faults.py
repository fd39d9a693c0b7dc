"""S3 connections cut or stalled midway, for real, through a proxy between pgvault and moto.

botocore retries a request (with backoff) until its response headers arrive, which covers an
upload cut or stalled while its body is sent. A download's body is read after that, so a
download cut or stalled midway is resumed by pgvault from the byte where it stopped, pinned
to the same object version. A fault that does not go away ends in one clear line, with the
multipart upload aborted and nothing listed.
"""

from __future__ import annotations

import time

import psycopg
import pytest
from botocore.config import Config

from pgvault_assets.engine.restore.restore import restore_backup
from pgvault_assets.engine.restore.verify import verify_backup
from pgvault_assets.engine.storage.store import reader, s3
from pgvault_assets.errors import StoreError
from pgvault_assets.settings import DatabaseUrl
from tests.conftest import AwsEnv, admin_connect
from tests.test_engine.helpers import DAY, back_up, marked, marker_intact, vault
from tests.test_faults.conftest import fill
from tests.test_faults.proxy import Fault, FaultyProxy

ROWS = 100_000  # about 4 MB stored: a part large enough to be cut in its middle
MIB = 1024 * 1024


@pytest.fixture
def source(make_database) -> str:
    url = make_database("net")
    fill(url, ROWS)
    return url


def _nothing_left_behind(aws_env: AwsEnv) -> None:
    assert aws_env.s3.list_multipart_uploads(Bucket=aws_env.bucket).get("Uploads", []) == []
    keys = [o["Key"] for o in aws_env.s3.list_objects_v2(Bucket=aws_env.bucket).get("Contents", [])]
    assert not [k for k in keys if k.endswith("manifest.json")]
    assert vault().list_manifests() == []


@pytest.mark.parametrize("mode", ["cut", "stall"])
def test_upload_cut_or_stalled_midway_is_retried_and_completes(
    faulty_proxy: FaultyProxy, aws_env: AwsEnv, source: str, mode: str
) -> None:
    faulty_proxy.fault = Fault("upload", mode, after_bytes=MIB, faults=1)

    manifest = back_up(source)

    assert faulty_proxy.broken == 1
    assert manifest.size_bytes > 2 * MIB
    assert verify_backup(vault(), DAY, full=True).sha256 == manifest.sha256
    assert aws_env.s3.list_multipart_uploads(Bucket=aws_env.bucket).get("Uploads", []) == []


def test_upload_cut_every_time_fails_in_one_line_and_aborts_the_upload(
    faulty_proxy: FaultyProxy, aws_env: AwsEnv, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        s3, "BOTO_CONFIG", s3.BOTO_CONFIG.merge(Config(retries={"max_attempts": 2}))
    )
    faulty_proxy.fault = Fault("upload", "cut", after_bytes=MIB, faults=-1)

    with pytest.raises(StoreError, match=r"S3 upload of .* failed .*check the network") as caught:
        back_up(source)

    assert "\n" not in str(caught.value)
    assert faulty_proxy.broken >= 2  # botocore tried again before giving up
    _nothing_left_behind(aws_env)


@pytest.mark.parametrize("mode", ["cut", "stall"])
def test_download_cut_or_stalled_midway_resumes_and_the_restore_completes(
    faulty_proxy: FaultyProxy, source: str, make_database, mode: str
) -> None:
    manifest = back_up(source)
    target = make_database("staging")
    faulty_proxy.fault = Fault("download", mode, after_bytes=MIB, faults=2)

    started = time.monotonic()
    result = restore_backup(vault(), DAY, DatabaseUrl(target))

    assert faulty_proxy.broken == 2  # the verifying read and the restoring read, each resumed
    if mode == "stall":
        assert time.monotonic() - started >= 2 * 2  # each stall ended by the 2 s read timeout
    assert result.manifest.sha256 == manifest.sha256
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (ROWS,)


def test_download_cut_every_time_fails_in_one_line_and_restores_nothing(
    faulty_proxy: FaultyProxy, source: str, make_database, monkeypatch: pytest.MonkeyPatch
) -> None:
    back_up(source)
    target = marked(make_database("staging"))
    monkeypatch.setattr(reader, "RESUME_ATTEMPTS", 2)
    # Every connection cut 64 KiB in: the manifest and the server context (a few KiB) come
    # whole, and no read of the object (larger) ever does, so no resumption makes progress.
    # (A cut after a whole read is progress, which resumptions build on to the end.)
    faulty_proxy.fault = Fault("download", "cut", after_bytes=64 * 1024, faults=-1)

    with pytest.raises(StoreError, match=r"S3 download of .* failed") as caught:
        restore_backup(vault(), DAY, DatabaseUrl(target))

    assert "\n" not in str(caught.value)
    assert "db_backup.sql.gz.enc" in str(caught.value)
    assert faulty_proxy.broken == 3  # the first read and two resumptions
    assert marker_intact(target)
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT to_regclass('public.t')").fetchone() == (None,)
    # Neither the database it restored beside the target nor a kept previous one is left.
    with admin_connect() as conn:
        beside = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
            (DatabaseUrl(target).dbname + "_",),
        ).fetchall()
    assert beside == []


def test_verify_backup_whose_download_keeps_failing_names_the_download_not_a_damaged_backup(
    faulty_proxy: FaultyProxy, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full verify that cannot read the object says so; it never calls an intact backup
    truncated or tampered with because the network failed under it."""
    back_up(source)
    monkeypatch.setattr(reader, "RESUME_ATTEMPTS", 1)
    faulty_proxy.fault = Fault("download", "cut", after_bytes=64 * 1024, faults=-1)

    with pytest.raises(StoreError, match=r"S3 download of .* failed") as caught:
        verify_backup(vault(), DAY, full=True)

    assert "\n" not in str(caught.value)
    assert "do not restore" not in str(caught.value)
    faulty_proxy.fault = None
    assert verify_backup(vault(), DAY, full=True).sha256 == vault().read_manifest(DAY).sha256
