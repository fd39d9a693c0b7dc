"""`pgvault init-storage` does the manual's AWS setup, creates only what is missing, and prints
a least-privilege policy for the real bucket and key."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from pgvault_assets.cli import main
from pgvault_assets.engine.storage.storage_setup import OPERATION_ACTIONS

ENGINE = Path(__file__).parents[2] / "pgvault_assets" / "engine"


def init_storage(capsys, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["init-storage", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def printed_policy(out: str) -> dict:
    return json.loads(out[out.index("{") :])


def results(out: str) -> dict[str, str]:
    """`what -> result` from the printed table."""
    rows = {}
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.strip("│┃ ").split("│")]
        if len(cells) == 3 and cells[1] in ("created", "found", "enabled", "set", "off"):
            rows[cells[0]] = cells[1]
    return rows


def assert_set_up(aws_env, bucket: str, alias: str) -> str:
    s3, kms = aws_env.s3, aws_env.kms
    key = kms.describe_key(KeyId=alias)["KeyMetadata"]
    assert key["KeyState"] == "Enabled"
    assert kms.get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"]
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": key["Arn"],
    }
    return key["Arn"]


def test_init_storage_creates_bucket_and_key_then_finds_them_unchanged(aws_env, new_names, capsys):
    bucket, alias = new_names
    code, out, err = init_storage(capsys)
    assert code == 0, err
    assert results(out) == {
        "KMS key": "created",
        "key rotation": "enabled",
        "bucket": "created",
        "versioning": "enabled",
        "public access block": "set",
        "default encryption": "set",
        "object lock": "off",
    }
    key_arn = assert_set_up(aws_env, bucket, alias)

    code, again, err = init_storage(capsys)
    assert code == 0, err
    assert set(results(again).values()) == {"found", "off"}
    assert "everything was already set up" in again
    assert aws_env.kms.describe_key(KeyId=alias)["KeyMetadata"]["Arn"] == key_arn


def test_init_storage_completes_a_bucket_and_key_made_by_hand(aws_env, capsys):
    code, out, err = init_storage(capsys)  # aws_env's bucket: versioned, nothing else
    assert code == 0, err
    assert results(out)["bucket"] == "found" and results(out)["KMS key"] == "found"
    assert results(out)["public access block"] == "set"
    assert_set_up(aws_env, aws_env.bucket, aws_env.kms_key_id)


def test_init_storage_uses_the_manuals_names_when_nothing_is_configured(
    aws_env, monkeypatch, capsys
):
    environment = f"t{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("ENVIRONMENT_NAME", environment)
    monkeypatch.delenv("BACKUP_S3_BUCKET")
    monkeypatch.delenv("BACKUP_KMS_KEY_ID")

    code, out, err = init_storage(capsys)

    assert code == 0, err
    bucket = f"quran-backend-backups-{environment}"
    assert_set_up(aws_env, bucket, "alias/quran-backend-backup-key")
    assert f"BACKUP_S3_BUCKET={bucket} BACKUP_KMS_KEY_ID=alias/quran-backend-backup-key" in out


def test_object_lock_on_request_makes_a_locked_bucket(aws_env, new_names, capsys):
    bucket, _ = new_names
    code, out, err = init_storage(capsys, "--object-lock")
    assert code == 0, err
    assert results(out)["bucket"] == "created"
    config = aws_env.s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert config["ObjectLockEnabled"] == "Enabled"
    assert results(init_storage(capsys, "--object-lock")[1])["object lock"] == "found"


def test_a_disabled_key_is_named_and_nothing_is_changed(aws_env, capsys):
    aws_env.kms.disable_key(KeyId=aws_env.kms_key_arn.rsplit("/", 1)[1])
    code, _, err = init_storage(capsys)
    assert code == 1
    assert f"KMS key {aws_env.kms_key_id} is Disabled; enable it" in err
    with pytest.raises(aws_env.s3.exceptions.ClientError):
        aws_env.s3.get_public_access_block(Bucket=aws_env.bucket)


def test_the_policy_names_the_real_bucket_and_key_and_requires_purpose_backup(aws_env, capsys):
    policy = printed_policy(init_storage(capsys)[1])
    statements = {s["Sid"]: s for s in policy["Statement"]}
    bucket_arn = f"arn:aws:s3:::{aws_env.bucket}"

    assert statements["PgvaultBucket"]["Resource"] == bucket_arn
    assert statements["PgvaultObjects"]["Resource"] == f"{bucket_arn}/*"
    data_keys = statements["PgvaultBackupDataKeys"]
    assert data_keys["Resource"] == aws_env.kms_key_arn
    assert sorted(data_keys["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert data_keys["Condition"] == {"StringEquals": {"kms:EncryptionContext:purpose": "backup"}}
    sse = statements["PgvaultBucketEncryption"]["Condition"]
    assert sse["StringEquals"] == {"kms:ViaService": "s3.us-east-1.amazonaws.com"}
    assert sse["StringLike"]["kms:EncryptionContext:aws:s3:arn"] == [bucket_arn, f"{bucket_arn}/*"]
    text = json.dumps(policy)
    assert "quran-backend-backups-*" not in text and "key/*" not in text
    assert "s3:BypassGovernanceRetention" not in text and 'kms:Encrypt"' not in text
    for needed in (
        "s3:GetObjectVersion",
        "s3:ListBucketVersions",
        "s3:DeleteObjectVersion",
        "s3:AbortMultipartUpload",
        "kms:DescribeKey",
        "s3:PutObjectRetention",
    ):
        assert needed in text


def test_the_policy_allows_every_aws_call_the_engine_makes():
    called = set()
    for source in ENGINE.rglob("*.py"):  # every room of the engine
        if source.name == "storage_setup.py":  # run by an administrator, not by pgvault's role
            continue
        text = source.read_text()
        called |= set(re.findall(r"client\.(\w+)\(", text))
        called |= set(re.findall(r"get_paginator\(\"(\w+)\"\)", text))
    assert called, "no client calls found: the scan is broken"
    assert called - {"get_paginator"} <= set(OPERATION_ACTIONS), called - set(OPERATION_ACTIONS)
