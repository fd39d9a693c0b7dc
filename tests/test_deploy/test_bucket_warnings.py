"""A bucket set up less safely than the manual says draws one warning line on first use."""

from __future__ import annotations

import logging
import uuid

import pytest

from pgvault_assets.cli import main
from pgvault_assets.engine.storage.store.s3 import S3Store

PUBLIC_ACCESS_BLOCKED = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


@pytest.fixture
def bucket(aws_env, monkeypatch) -> str:
    """A fresh bucket as `aws s3api create-bucket` leaves it: unversioned, no access block."""
    name = f"pgvault-plain-{uuid.uuid4().hex[:12]}"
    aws_env.s3.create_bucket(Bucket=name)
    monkeypatch.setenv("BACKUP_S3_BUCKET", name)
    return name


def store_warnings(bucket: str, aws_env, caplog) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pgvault_assets"):
        S3Store(bucket, aws_env.kms_key_id).list("test/")
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_an_unversioned_bucket_is_named_on_first_use(bucket, aws_env, caplog):
    aws_env.s3.put_public_access_block(
        Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCKED
    )
    (warning,) = store_warnings(bucket, aws_env, caplog)
    assert bucket in warning and "versioning off" in warning and "init-storage" in warning


def test_a_bucket_without_public_access_block_is_named_on_first_use(bucket, aws_env, caplog):
    aws_env.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    (warning,) = store_warnings(bucket, aws_env, caplog)
    assert bucket in warning and "public access block" in warning


def test_a_bucket_set_up_as_the_manual_says_draws_no_warning(bucket, aws_env, caplog):
    aws_env.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    aws_env.s3.put_public_access_block(
        Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCKED
    )
    assert store_warnings(bucket, aws_env, caplog) == []


def test_the_warning_comes_once_per_process_not_once_per_store(bucket, aws_env, caplog):
    assert len(store_warnings(bucket, aws_env, caplog)) == 2
    assert store_warnings(bucket, aws_env, caplog) == []


def test_the_cli_prints_each_warning_as_one_line(bucket, capsys):
    assert main(["list-backups"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 2
    assert any("versioning off" in line for line in lines)
    assert any("public access block" in line for line in lines)
