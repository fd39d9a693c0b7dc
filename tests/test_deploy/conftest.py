"""Buckets and keys for the deployment tests, made in the session's moto server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest

from tests.conftest import AwsEnv


@pytest.fixture
def locked_env(aws_env: AwsEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsEnv]:
    """pgvault pointed at a bucket created with S3 Object Lock (and so versioning)."""
    bucket = f"pgvault-locked-{uuid.uuid4().hex[:12]}"
    aws_env.s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    monkeypatch.setenv("BACKUP_S3_BUCKET", bucket)
    yield replace(aws_env, bucket=bucket)


@pytest.fixture
def new_names(aws_env: AwsEnv, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A bucket name and a key alias that exist nowhere yet, configured for pgvault."""
    suffix = uuid.uuid4().hex[:12]
    bucket, alias = f"pgvault-new-{suffix}", f"alias/pgvault-new-{suffix}"
    monkeypatch.setenv("BACKUP_S3_BUCKET", bucket)
    monkeypatch.setenv("BACKUP_KMS_KEY_ID", alias)
    return bucket, alias
