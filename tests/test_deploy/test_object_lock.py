"""Immutable backups: in a bucket with S3 Object Lock, nothing deletes a backup before its tier
allows, retention included, and the audit trail cannot be rewritten by anyone."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

import botocore.exceptions
import pytest

from pgvault_assets.engine.approvals import audit
from pgvault_assets.engine.backup.retention import apply_retention, plan_retention
from pgvault_assets.engine.basics.names import manifest_key
from pgvault_assets.engine.basics.policy import retention_days, tier_of
from pgvault_assets.engine.restore.verify import verify_backup
from pgvault_assets.engine.storage.immutability import audit_retain_until, backup_retain_until
from pgvault_assets.engine.storage.storage_setup import iam_policy
from pgvault_assets.settings import RetentionPolicy
from tests.test_defs.backup_history import fake_manifest
from tests.test_engine.helpers import DAY, back_up, vault

POLICY = RetentionPolicy(daily_days=30, weekly_days=90, monthly_days=365)
LONG_AGO = datetime(2025, 1, 1, tzinfo=UTC)
# The month's copy of February 2025 (listed, not stored): the 12th is then a weekly backup.
FEBRUARY_1ST = fake_manifest("test", date(2025, 2, 1))


def lock_of(env, key: str) -> tuple[str | None, datetime | None]:
    head = env.s3.head_object(Bucket=env.bucket, Key=key)
    return head.get("ObjectLockMode"), head.get("ObjectLockRetainUntilDate")


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


# Backed up before 3 March 2025: the month's first backup (a Saturday) and the Sunday.
EARLIER = (date(2025, 3, 1), date(2025, 3, 2))


def test_each_tier_is_locked_until_the_day_retention_may_delete_it():
    def until(day: date, policy: RetentionPolicy = POLICY) -> datetime | None:
        return backup_retain_until(day, policy, now=LONG_AGO, backed_up=EARLIER)

    assert until(date(2025, 3, 3)) == midnight(date(2025, 4, 3))  # daily: deletable 3 April
    assert until(date(2025, 3, 2)) == midnight(date(2025, 6, 1))  # the week's first: 90 days
    assert until(date(2025, 3, 1)) == midnight(date(2026, 3, 2))  # the month's first: 365 days
    shorter = RetentionPolicy(daily_days=7, weekly_days=14, monthly_days=28)
    assert until(date(2025, 3, 3), shorter) == midnight(date(2025, 3, 11))


def test_a_backup_standing_in_for_its_month_is_locked_as_the_months_copy():
    # The backup of the 1st failed: the 3rd is the month's first backup.
    assert backup_retain_until(date(2025, 3, 3), POLICY, now=LONG_AGO) == midnight(date(2026, 3, 4))


def test_a_lock_date_already_past_is_not_requested():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert backup_retain_until(date(2025, 3, 3), POLICY, now=now, backed_up=EARLIER) is None


def test_backup_and_manifest_in_a_locked_bucket_are_locked_in_governance_mode_for_their_tier(
    locked_env, awkward_database
):
    manifest = back_up(awkward_database)
    expected = backup_retain_until(DAY, RetentionPolicy(), now=manifest.started_at)

    assert expected is not None
    for key in (manifest.object_key, vault().manifest_key(DAY)):
        assert lock_of(locked_env, key) == ("GOVERNANCE", expected)


def test_compliance_mode_is_used_when_asked_for(locked_env, awkward_database, monkeypatch):
    monkeypatch.setenv("BACKUP_OBJECT_LOCK_MODE", "compliance")
    manifest = back_up(awkward_database)

    assert lock_of(locked_env, manifest.object_key)[0] == "COMPLIANCE"
    assert lock_of(locked_env, vault().manifest_key(DAY))[0] == "COMPLIANCE"


def test_a_bucket_without_object_lock_gets_plain_writes(aws_env, awkward_database):
    manifest = back_up(awkward_database)
    assert lock_of(aws_env, manifest.object_key) == (None, None)


def test_a_locked_backup_cannot_be_deleted_early_even_with_the_backup_role(
    locked_env, awkward_database
):
    """The backup role may delete object versions but never bypass governance (its policy, as
    `init-storage` prints it); moto checks no IAM, so the delete is sent exactly as that role
    can send it, without the bypass header, and refused for the backup and its manifest."""
    statements = iam_policy(locked_env.bucket, locked_env.kms_key_arn)["Statement"]
    granted = {action for statement in statements for action in statement["Action"]}
    assert "s3:DeleteObjectVersion" in granted
    assert not {a for a in granted if "Bypass" in a or a in ("s3:*", "*")}

    manifest = back_up(awkward_database)
    versions = locked_env.s3.list_object_versions(Bucket=locked_env.bucket, Prefix="test/")
    for key in (manifest.object_key, manifest_key("test", DAY)):
        version = next(v["VersionId"] for v in versions["Versions"] if v["Key"] == key)
        with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
            locked_env.s3.delete_object(Bucket=locked_env.bucket, Key=key, VersionId=version)
        assert locked_env.s3.head_object(Bucket=locked_env.bucket, Key=key, VersionId=version)
    assert verify_backup(vault(), DAY, full=True).sha256 == manifest.sha256


def test_retention_leaves_a_locked_backup_whole_and_says_until_when(
    locked_env, awkward_database, caplog
):
    manifest = back_up(awkward_database)
    v = vault()
    # Only yesterday can be dumped, so its tier depends on today: a Sunday is kept 90 days.
    kept_for = retention_days(tier_of(DAY, v.retention), v.retention)
    later = DAY + timedelta(days=kept_for + 10)  # past its tier's days, still locked in S3
    plan = plan_retention(
        v.list_manifests(), later, v.retention, now=manifest.finished_at, min_keep=0
    )
    assert [d.day for d in plan.delete] == [DAY]

    with caplog.at_level(logging.WARNING):
        deleted = apply_retention(v, plan)

    assert deleted == []
    assert [m.date for m in vault().list_manifests()] == [DAY]
    assert v.store.get_bytes(manifest.object_key) is not None
    assert f"backup {DAY.isoformat()} is under S3 Object Lock until" in caplog.text
    assert "not deleted yet" in caplog.text


def test_retention_never_deletes_the_manifest_of_a_backup_whose_object_is_locked(locked_env):
    v = vault()
    old = fake_manifest("test", date(2025, 2, 12))
    v.store.put_bytes(
        old.object_key, b"locked object", retain_until=datetime.now(UTC) + timedelta(days=2)
    )
    v.store.put_bytes(v.manifest_key(old.date), old.to_json())  # written without a lock
    plan = plan_retention(
        [FEBRUARY_1ST, old], date(2025, 12, 31), v.retention, now=old.finished_at, min_keep=0
    )
    assert [d.day for d in plan.delete] == [old.date]

    assert apply_retention(v, plan) == []
    assert v.store.get_bytes(v.manifest_key(old.date)) == old.to_json()


def test_retention_deletes_a_backup_once_its_lock_has_expired(locked_env):
    v = vault()
    old = fake_manifest("test", date(2025, 2, 12))
    v.store.put_bytes(old.object_key, b"object")  # no lock, as after its date
    v.store.put_bytes(v.manifest_key(old.date), old.to_json())
    plan = plan_retention(
        [FEBRUARY_1ST, old], date(2025, 12, 31), v.retention, now=old.finished_at, min_keep=0
    )

    assert set(apply_retention(v, plan)) == {old.object_key, v.manifest_key(old.date)}
    assert vault().list_manifests() == []


def test_audit_records_in_a_locked_bucket_are_compliance_locked_and_never_rewritten(locked_env):
    v = vault()
    now = datetime.now(UTC)
    record = audit.append(v, "staging", "staging-restore", {"date": "2025-11-06"}, now=now)

    mode, until = lock_of(locked_env, record.key)
    assert mode == "COMPLIANCE"
    assert until == audit_retain_until(v.retention, now=now).replace(microsecond=0)
    with pytest.raises(audit.RecordExists):
        audit.put_new(v.store, record.key, b'{"record": "forged"}')
    version = locked_env.s3.head_object(Bucket=locked_env.bucket, Key=record.key)["VersionId"]
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        locked_env.s3.delete_object(
            Bucket=locked_env.bucket,
            Key=record.key,
            VersionId=version,
            BypassGovernanceRetention=True,
        )
    assert audit.read_record(v, record.key).body["date"] == "2025-11-06"
