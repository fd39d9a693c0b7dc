"""Everything pgvault writes to S3 is encrypted at rest with SSE-KMS under the backup key."""

from __future__ import annotations

from datetime import UTC, datetime

from pgvault_assets.engine.approvals import audit
from pgvault_assets.engine.recovery.drill import DrillReport, store_report
from pgvault_assets.engine.recovery.restore_check import RestoreProof, record_restore_verified
from tests.test_engine.helpers import DAY, back_up, vault


def test_every_object_pgvault_writes_is_sse_kms_with_the_backup_key(aws_env, awkward_database):
    manifest = back_up(awkward_database)
    v = vault()
    now = datetime.now(UTC)
    audit.append(v, "staging", audit.STAGING_RESTORE, {"date": DAY.isoformat()}, now=now)
    record_restore_verified(v, RestoreProof(DAY, now, "scratch", 3, 10, 1.0, "0" * 64))
    store_report(v, DrillReport("test", now, DAY, "latest", manifest.sha256, 14400.0))
    with v.store.lock("probe"):  # a lock object lives only while held
        lock = aws_env.s3.head_object(Bucket=aws_env.bucket, Key=".locks/probe.json")
    assert lock.get("ServerSideEncryption") == "aws:kms"
    assert lock.get("SSEKMSKeyId") in (aws_env.kms_key_id, aws_env.kms_key_arn)

    versions = aws_env.s3.list_object_versions(Bucket=aws_env.bucket)["Versions"]
    keys = {item["Key"] for item in versions}
    kinds = ("db_backup.sql.gz.enc", "manifest.json", "/audit/", "restore_verified", "/drills/")
    assert all(any(kind in key for key in keys) for kind in kinds), keys
    for item in versions:
        head = aws_env.s3.head_object(
            Bucket=aws_env.bucket, Key=item["Key"], VersionId=item["VersionId"]
        )
        assert head.get("ServerSideEncryption") == "aws:kms", item["Key"]
        assert head.get("SSEKMSKeyId") in (aws_env.kms_key_id, aws_env.kms_key_arn), item["Key"]
