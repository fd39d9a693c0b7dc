"""The audit trail only grows: create-only writes on both stores, never an overwrite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pgvault_assets.engine.approvals import audit
from pgvault_assets.settings import DatabaseUrl
from tests.test_engine.helpers import DAY, back_up, vault
from tests.test_recovery.conftest import execute, scalar
from tests.test_recovery.helpers import prove_on_staging, run

MOMENT = datetime(2025, 11, 6, 14, 30, tzinfo=UTC)


@pytest.fixture(params=["local", "s3"])
def store_env(request):
    """The same promises against the local store and the moto-backed S3 store."""
    return request.getfixturevalue("local_env" if request.param == "local" else "aws_env")


def test_a_create_only_write_never_replaces_an_existing_record(store_env):
    store = vault().store
    audit.put_new(store, "test/audit/x/one.json", b"first")

    with pytest.raises(audit.RecordExists):
        audit.put_new(store, "test/audit/x/one.json", b"second")

    assert store.get_bytes("test/audit/x/one.json") == b"first"


def test_a_once_only_name_can_be_claimed_once(store_env):
    v = vault()
    audit.append(v, "executions", "execution", {"request_id": "r"}, now=MOMENT, name="r")

    with pytest.raises(audit.RecordExists):
        audit.append(v, "executions", "execution", {"request_id": "r"}, now=MOMENT, name="r")

    assert [r.record for r in audit.audit_records(v)] == ["execution"]


def test_records_written_in_the_same_instant_are_all_kept(local_env):
    v = vault()
    for n in range(5):
        audit.append(v, "staging", "note", {"n": n}, now=MOMENT)

    records = audit.audit_records(v, "staging")

    assert len(records) == 5
    assert all(r.recorded_at == MOMENT for r in records)


def test_a_local_create_only_write_leaves_no_temporary_file(local_env):
    audit.put_new(vault().store, "test/audit/x/one.json", b"first")
    with pytest.raises(audit.RecordExists):
        audit.put_new(vault().store, "test/audit/x/one.json", b"second")

    assert sorted(p.name for p in (local_env / "store" / "test" / "audit" / "x").iterdir()) == [
        "one.json"
    ]


def staging_records(record: str) -> list[audit.AuditRecord]:
    return [r for r in audit.audit_records(vault(), "staging") if r.record == record]


def test_a_staging_rollback_is_recorded_with_who_what_and_outcome(databases, capsys):
    restore = ("restore-from-backup", "--date", str(DAY), "--target", "staging")
    assert run(capsys, *restore)[0] == 0

    code, out, err = run(capsys, "rollback-restore", "--target", "staging")

    assert code == 0, err
    [record] = staging_records(audit.STAGING_ROLLBACK)
    staging = DatabaseUrl(databases.staging).dbname
    assert record.body["database"] == staging
    assert record.body["succeeded"] is True
    assert record.body["actor"] == audit.operator() != "unknown"
    assert record.body["swapped_in"].startswith(f"{staging}_pre_restore_")
    assert record.body["swapped_in"] in out
    listing = run(capsys, "audit")[1]
    assert "staging-rollback" in listing and f"by {audit.operator()}" in listing


def test_a_failed_staging_rollback_is_recorded_as_failed(databases, capsys):
    code, _, err = run(capsys, "rollback-restore", "--target", "staging")

    assert code == 1
    assert "nothing to roll back" in err
    [record] = staging_records(audit.STAGING_ROLLBACK)
    assert record.body["succeeded"] is False
    assert "nothing to roll back" in record.body["detail"]
    assert "FAILED: there is no earlier database" in run(capsys, "audit")[1]


def test_a_failed_staging_restore_is_recorded_and_staging_still_holds_the_proven_backup(
    databases, local_env, capsys
):
    prove_on_staging(capsys)
    databases_url = DatabaseUrl(databases.staging)
    manifest = databases.manifest
    stored = local_env / "store" / manifest.object_key
    stored.write_bytes(stored.read_bytes() + b"tampered")

    code, _, err = run(capsys, "restore-from-backup", "--date", str(DAY), "--target", "staging")

    assert code == 1, err
    first, failed = staging_records(audit.STAGING_RESTORE)
    assert first.body["succeeded"] is True
    assert failed.body["succeeded"] is False
    assert failed.body["sha256"] == manifest.sha256
    assert "manifest says" in failed.body["detail"]
    assert failed.body["database"] == databases_url.dbname
    # The failed restore left staging holding the proven backup: the pass still counts.
    assert audit.staging_verified(vault(), DAY, manifest.sha256)


def test_an_integrity_pass_after_a_staging_rollback_does_not_prove_the_rolled_back_backup(
    databases, capsys
):
    earlier = DAY - timedelta(days=1)
    back_up(databases.production, day=earlier)  # the same rows: it passes DAY's count check too
    for day in (earlier, DAY):
        restore = ("restore-from-backup", "--date", str(day), "--target", "staging")
        assert run(capsys, *restore)[0] == 0
    assert run(capsys, "rollback-restore", "--target", "staging")[0] == 0  # holds `earlier`

    code, _, err = run(
        capsys, "check-database-integrity", "--database", "staging", "--date", str(DAY)
    )

    assert code == 0, err
    assert not audit.staging_verified(vault(), DAY, databases.manifest.sha256)


def test_a_row_recovery_into_staging_is_recorded(databases, capsys):
    assert run(capsys, "restore-from-backup", "--date", str(DAY), "--target", "staging")[0] == 0
    user = scalar(databases.staging, "SELECT min(id) FROM public.users")
    execute(databases.staging, "DELETE FROM public.users WHERE id = %s", (user,))
    argv = ("recover-rows", "--date", str(DAY), "--table", "public.users", "--target", "staging")

    assert run(capsys, *argv, "--where", f"id = {user}")[0] == 0
    assert staging_records(audit.ROW_RECOVERY) == [], "a dry run changes nothing to record"
    code, _, err = run(capsys, *argv, "--where", f"id = {user}", "--apply")

    assert code == 0, err
    [record] = staging_records(audit.ROW_RECOVERY)
    assert record.body["succeeded"] is True
    assert record.body["inserted"] == 1
    assert record.body["table"] == "public.users"
    assert record.body["where"] == f"id = {user}"
    assert record.body["sha256"] == databases.manifest.sha256
    assert record.body["actor"] == audit.operator()


def test_a_failed_row_recovery_into_staging_is_recorded_as_failed(databases, capsys):
    code, _, err = run(
        capsys,
        *("recover-rows", "--date", str(DAY), "--table", "public.users"),
        *("--target", "staging", "--apply"),
    )

    assert code == 2, err
    [record] = staging_records(audit.ROW_RECOVERY)
    assert record.body["succeeded"] is False
    assert "the target has no table public.users" in record.body["detail"]
