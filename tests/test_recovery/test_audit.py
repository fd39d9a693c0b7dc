"""The audit trail only grows: create-only writes on both stores, never an overwrite."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pgvault_assets.engine import audit
from tests.test_engine.helpers import vault

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
