"""Databases kept beside a target by restores and rollbacks live RESTORE_KEEP_PREVIOUS_HOURS,
counted from the time in their names against the clock, then the maintenance drops them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from pgvault_assets.engine.approvals import audit
from pgvault_assets.engine.basics.names import database_beside, restore_claim
from pgvault_assets.engine.recovery.kept_databases import drop_expired_kept_databases, kept_until
from pgvault_assets.settings import DatabaseUrl
from tests.conftest import MAINTENANCE_URL, admin_connect
from tests.test_engine.helpers import vault

NOW = datetime(2025, 3, 10, 12, 0, 0, tzinfo=UTC)
KEEP_HOURS = 72


def _kept(target: str, label: str, age: timedelta) -> str:
    name = database_beside(target, label, (NOW - age).strftime("%Y%m%d%H%M%S"))
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def _exists(name: str) -> bool:
    with admin_connect() as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def test_kept_databases_older_than_the_bound_are_dropped_and_audited_newer_never(
    local_env, make_database
):
    target = DatabaseUrl(make_database("target"))
    other = DatabaseUrl(make_database("other"))
    old = _kept(target.dbname, "pre_restore", timedelta(hours=KEEP_HOURS + 1))
    at_bound = _kept(target.dbname, "rolled_back", timedelta(hours=KEEP_HOURS))
    just_inside = _kept(target.dbname, "pre_restore", timedelta(hours=KEEP_HOURS, seconds=-1))
    recent = _kept(target.dbname, "rolled_back", timedelta(hours=1))
    not_a_target = _kept(other.dbname, "pre_restore", timedelta(days=30))
    look_alike = f"{target.dbname}_pre_restore_keepme"
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(look_alike)))

    result = drop_expired_kept_databases(vault(), [target], KEEP_HOURS, now=lambda: NOW)

    assert [d.name for d in result.dropped] == [old, at_bound]
    assert [k.name for k in result.kept] == [just_inside, recent]
    assert not _exists(old) and not _exists(at_bound)
    assert all(map(_exists, (just_inside, recent, not_a_target, look_alike)))
    records = audit.audit_records(vault(), "maintenance")
    # Records written in the same second list in no particular order.
    assert sorted((r.record, r.body["database"]) for r in records) == sorted(
        [(audit.KEPT_DATABASE_DROPPED, old), (audit.KEPT_DATABASE_DROPPED, at_bound)]
    )
    (of_old,) = [r for r in records if r.body["database"] == old]
    assert of_old.body["kept_until"] == (NOW - timedelta(hours=1)).isoformat()


def test_a_target_being_restored_is_left_for_next_time(local_env, make_database):
    target = DatabaseUrl(make_database("target"))
    old = _kept(target.dbname, "pre_restore", timedelta(days=30))

    with psycopg.connect(MAINTENANCE_URL, autocommit=True) as restoring:
        restoring.execute("SELECT pg_advisory_lock(hashtext(%s))", (restore_claim(target.dbname),))
        result = drop_expired_kept_databases(vault(), [target], KEEP_HOURS, now=lambda: NOW)

    assert result.dropped == () and _exists(old)
    assert result.skipped == (f"{target.dbname}: a restore or rollback of it is running",)


def test_kept_until_counts_from_the_time_in_the_name():
    assert kept_until("app_pre_restore_20250310120000", 72) == datetime(
        2025, 3, 13, 12, 0, tzinfo=UTC
    )
    assert kept_until("app_pre_restore_2025031012000x", 72) is None
