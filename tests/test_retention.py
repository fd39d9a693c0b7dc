"""Retention: the manual's tiers, deletions with every S3 version, the 7-backup floor, the stale
guard, and which leftovers of interrupted runs a cleanup may remove."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta

import pytest
from test_defs.backup_history import fake_manifest, write_backup, write_history

from pgvault_assets.engine.backup.cleanup import RepairKind, find_orphans, run_cleanup
from pgvault_assets.engine.backup.retention import apply_retention, plan_retention
from pgvault_assets.engine.basics.policy import Tier, tier_of, tiers_of
from pgvault_assets.engine.monitoring.catalog import backup_rows
from pgvault_assets.engine.storage.store import StoredObject
from pgvault_assets.engine.storage.store.local import LocalStore
from pgvault_assets.engine.storage.store.s3 import S3Store
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import LockBusy
from pgvault_assets.settings import RetentionPolicy, load_settings

POLICY = RetentionPolicy()
TODAY = date(2025, 12, 31)
NOW = datetime(2025, 12, 31, 3, 0, tzinfo=UTC)


@pytest.fixture
def vault(tmp_path) -> Vault:
    return Vault("test", LocalStore(tmp_path / "store"), None)


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


MARCH_2025 = days_between(date(2025, 3, 1), date(2025, 3, 31))


def test_with_every_day_backed_up_the_1st_is_monthly_sundays_weekly_other_days_daily():
    tiers = tiers_of(MARCH_2025)
    assert tiers[date(2025, 3, 1)] is Tier.MONTHLY  # a Saturday
    assert tiers[date(2025, 3, 2)] is Tier.WEEKLY  # a Sunday
    assert tiers[date(2025, 3, 3)] is Tier.DAILY
    assert {d for d, t in tiers.items() if t is Tier.WEEKLY} == {
        date(2025, 3, 2),
        date(2025, 3, 9),
        date(2025, 3, 16),
        date(2025, 3, 23),
        date(2025, 3, 30),
    }


def test_a_sunday_first_of_month_takes_the_longer_tier():
    assert date(2025, 6, 1).weekday() == 6
    june = days_between(date(2025, 6, 1), date(2025, 6, 30))
    assert tier_of(date(2025, 6, 1), backed_up=june) is Tier.MONTHLY
    shorter_monthly = RetentionPolicy(daily_days=30, weekly_days=90, monthly_days=60)
    assert tier_of(date(2025, 6, 1), shorter_monthly, backed_up=june) is Tier.WEEKLY


def test_when_the_backup_of_the_1st_failed_the_next_one_keeps_the_month():
    without_the_1st = [d for d in MARCH_2025 if d != date(2025, 3, 1)]
    tiers = tiers_of(without_the_1st)
    assert tiers[date(2025, 3, 2)] is Tier.MONTHLY  # the month's first backup, and a Sunday
    assert [d for d, t in tiers.items() if t is Tier.MONTHLY] == [date(2025, 3, 2)]


def test_when_the_sunday_backup_failed_the_next_one_keeps_the_week():
    without_sunday = [d for d in MARCH_2025 if d != date(2025, 3, 9)]
    tiers = tiers_of(without_sunday)
    assert tiers[date(2025, 3, 10)] is Tier.WEEKLY  # Monday stands in
    assert tiers[date(2025, 3, 11)] is Tier.DAILY


def test_retention_keeps_the_stand_in_for_its_tiers_days(vault):
    for day in days_between(date(2025, 3, 2), date(2025, 4, 30)):
        if day != date(2025, 3, 9):  # that Sunday's backup failed
            write_backup(vault, fake_manifest("test", day))
    today = date(2025, 5, 1)
    now = datetime(2025, 5, 1, 3, 0, tzinfo=UTC)
    plan = plan_retention(vault.list_manifests(), today, POLICY, now=now, min_keep=0)
    kept = {d.day: d.tier for d in plan.keep}
    assert kept[date(2025, 3, 10)] is Tier.WEEKLY  # 52 days old, kept as the week's copy
    assert date(2025, 3, 11) not in kept  # a daily of the same week, past its 30 days


def test_a_year_of_daily_backups_keeps_30_days_13_weeks_and_12_months(vault):
    write_history(vault, date(2025, 1, 1), date(2025, 12, 30))
    plan = plan_retention(vault.list_manifests(), TODAY, POLICY, now=NOW)

    assert plan.blocked_reason is None
    kept = {d.day for d in plan.keep}
    for decision in plan.keep:
        age = (TODAY - decision.day).days
        assert age <= {Tier.DAILY: 30, Tier.WEEKLY: 90, Tier.MONTHLY: 365}[decision.tier]
    for decision in plan.delete:
        assert (
            decision.age_days > {Tier.DAILY: 30, Tier.WEEKLY: 90, Tier.MONTHLY: 365}[decision.tier]
        )
    assert all(TODAY - timedelta(days=n) in kept for n in range(1, 31))
    assert {d for d in kept if d.day == 1} == {date(2025, m, 1) for m in range(1, 13)}
    old_sundays = {d for d in kept if d.weekday() == 6 and (TODAY - d).days > 30 and d.day != 1}
    assert old_sundays and all((TODAY - d).days <= 90 for d in old_sundays)
    assert plan.kept_per_tier["monthly"] == 12
    assert len(plan.keep) + len(plan.delete) == 364


def test_applying_the_plan_deletes_manifest_object_and_proof_and_the_rest_stays_listed(vault):
    write_history(vault, date(2025, 1, 1), date(2025, 12, 30))
    doomed = date(2025, 3, 12)
    vault.store.put_bytes(f"test/{doomed}/restore_verified.json", b"{}")
    plan = plan_retention(vault.list_manifests(), TODAY, POLICY, now=NOW)

    deleted = apply_retention(vault, plan)

    assert f"test/{doomed}/manifest.json" in deleted
    assert f"test/{doomed}/db_backup.sql.gz.enc" in deleted
    assert f"test/{doomed}/restore_verified.json" in deleted
    assert vault.store.list(f"test/{doomed}/") == []
    assert [m.date for m in vault.list_manifests()] == sorted(d.day for d in plan.keep)


def test_the_manifest_is_deleted_before_the_object(vault):
    write_history(vault, date(2025, 1, 1), date(2025, 1, 5))  # the month's and week's copies
    manifest = fake_manifest("test", date(2025, 1, 6))
    write_backup(vault, manifest)
    write_history(vault, date(2025, 12, 20), date(2025, 12, 30))
    order: list[str] = []
    real_delete = vault.store.delete

    def recording_delete(key: str) -> int:
        order.append(key)
        return real_delete(key)

    vault.store.delete = recording_delete  # type: ignore[method-assign]
    apply_retention(vault, plan_retention(vault.list_manifests(), TODAY, POLICY, now=NOW))

    assert order.index("test/2025-01-06/manifest.json") < order.index(
        "test/2025-01-06/db_backup.sql.gz.enc"
    )


def test_never_fewer_than_seven_backups_remain_even_when_all_expired(vault):
    write_history(vault, date(2024, 12, 2), date(2024, 12, 20))  # all past their tiers
    newest_finished = vault.list_manifests()[-1].finished_at
    plan = plan_retention(
        vault.list_manifests(), TODAY, POLICY, now=newest_finished + timedelta(hours=1)
    )

    assert len(plan.keep) == 7
    assert {d.day for d in plan.keep} == {date(2024, 12, n) for n in range(14, 21)}
    assert "at least 7" in plan.keep[-1].reason
    apply_retention(vault, plan)
    assert len(vault.list_manifests()) == 7


def test_nothing_is_deleted_while_the_newest_backup_is_older_than_36_hours(vault):
    write_history(vault, date(2025, 1, 1), date(2025, 12, 1))
    newest_finished = vault.list_manifests()[-1].finished_at
    plan = plan_retention(
        vault.list_manifests(), TODAY, POLICY, now=newest_finished + timedelta(hours=37)
    )

    assert plan.delete == ()
    assert plan.blocked_reason is not None and "36 h" in plan.blocked_reason
    assert apply_retention(vault, plan) == []
    assert len(vault.list_manifests()) == 335


def test_a_newest_backup_35_hours_old_does_not_block_deletion(vault):
    write_history(vault, date(2025, 1, 1), date(2025, 12, 1))
    newest_finished = vault.list_manifests()[-1].finished_at
    plan = plan_retention(
        vault.list_manifests(), TODAY, POLICY, now=newest_finished + timedelta(hours=35)
    )
    assert plan.blocked_reason is None and plan.delete


def test_retention_refuses_to_run_beside_another_retention(vault):
    write_history(vault, date(2025, 1, 1), date(2025, 12, 30))
    plan = plan_retention(vault.list_manifests(), TODAY, POLICY, now=NOW)
    with vault.store.lock("test-retention"), pytest.raises(LockBusy):
        apply_retention(vault, plan)


def test_expired_backups_in_s3_lose_every_version(aws_env):
    vault = Vault("test", S3Store(aws_env.bucket, aws_env.kms_key_id), None)
    old = fake_manifest("test", date(2025, 2, 12))
    write_backup(vault, old, b"first version")
    write_backup(vault, old, b"second version")
    write_backup(vault, fake_manifest("test", date(2025, 2, 1)))  # February's monthly copy
    for day in range(20, 31):
        write_backup(vault, fake_manifest("test", date(2025, 12, day)))

    deleted = apply_retention(vault, plan_retention(vault.list_manifests(), TODAY, POLICY, now=NOW))

    assert old.object_key in deleted
    versions = aws_env.s3.list_object_versions(Bucket=aws_env.bucket, Prefix="test/2025-02-12/")
    assert versions.get("Versions", []) == [] and versions.get("DeleteMarkers", []) == []
    assert len(vault.list_manifests()) == 12


def _aged(vault: Vault, key: str, when: datetime) -> None:
    path = vault.store.root / key  # type: ignore[attr-defined]
    os.utime(path, (when.timestamp(), when.timestamp()))


def test_only_backup_files_of_dates_without_a_manifest_count_as_orphans():
    march_1st = fake_manifest("test", date(2025, 3, 1))  # March's monthly copy
    plan = plan_retention(
        [march_1st] + [fake_manifest("test", date(2025, 12, d)) for d in range(20, 31)],
        TODAY,
        POLICY,
        now=NOW,
    )
    old = NOW - timedelta(days=3)
    listing = [
        StoredObject("test/2025-03-12/db_backup.sql.gz.enc", 10, old),  # expired, no manifest
        StoredObject("test/2025-03-12/restore_verified.json", 10, old),
        StoredObject("test/2025-12-25/db_backup.sql.gz.enc", 10, old),  # has its manifest
        StoredObject("test/2025-03-13/notes.txt", 10, old),  # not a file pgvault writes there
        StoredObject("test/reports/2025-03-12-health.md", 10, old),
        StoredObject("test/audit/2025-03-12/record.json", 10, old),
        StoredObject("other/2025-03-12/db_backup.sql.gz.enc", 10, old),
    ]

    found = find_orphans("test", listing, plan, POLICY, now=NOW)

    assert [(o.kind, o.key) for o in found] == [
        (RepairKind.EXPIRED_ORPHAN, "test/2025-03-12/db_backup.sql.gz.enc"),
        (RepairKind.EXPIRED_ORPHAN, "test/2025-03-12/restore_verified.json"),
    ]


def test_a_recent_dump_without_manifest_goes_only_once_a_day_old_and_superseded():
    plan = plan_retention(
        [fake_manifest("test", date(2025, 12, d)) for d in range(20, 29)], TODAY, POLICY, now=NOW
    )
    day_old, fresh = NOW - timedelta(days=1), NOW - timedelta(hours=3)
    listing = [
        StoredObject("test/2025-12-15/db_backup.sql.gz.enc", 10, day_old),  # superseded
        StoredObject("test/2025-12-16/db_backup.sql.gz.enc", 10, fresh),  # may be re-run today
        StoredObject("test/2025-12-29/db_backup.sql.gz.enc", 10, day_old),  # the newest dump
    ]

    found = find_orphans("test", listing, plan, POLICY, now=NOW)

    assert [(o.kind, o.day) for o in found] == [(RepairKind.UNFINISHED_ORPHAN, date(2025, 12, 15))]


def test_cleanup_removes_an_orphan_with_every_version_and_keeps_the_backups(vault):
    write_history(vault, date(2025, 12, 1), date(2025, 12, 30))
    orphan = fake_manifest("test", date(2025, 12, 10))
    vault.store.delete(vault.manifest_key(orphan.date))
    for body in (b"first try", b"second try"):  # each killed before its manifest
        writer = vault.store.open_writer(orphan.object_key)
        writer.write(body)
        writer.commit()
    assert list((vault.store.root / "test" / "2025-12-10" / ".versions").iterdir())
    _aged(vault, orphan.object_key, NOW - timedelta(days=2))

    result = run_cleanup(vault, POLICY, now=NOW)

    assert result.repair_lines() == [
        "removed 1 orphaned object of backups interrupted before their manifest (2025-12-10)"
    ]
    assert result.repaired_count == 1
    assert not (vault.store.root / "test" / "2025-12-10").exists()
    assert len(vault.list_manifests()) == 29


def test_stale_partial_files_are_removed_and_fresh_ones_kept(vault):
    write_history(vault, date(2025, 12, 20), date(2025, 12, 30))
    folder = vault.store.root / "test" / "2025-12-30"
    stale = folder / ".db_backup.sql.gz.enc.partial-aaaa"
    fresh = folder / ".db_backup.sql.gz.enc.partial-bbbb"
    for path in (stale, fresh):
        path.write_bytes(b"half a dump")
    _aged(vault, "test/2025-12-30/.db_backup.sql.gz.enc.partial-aaaa", NOW - timedelta(days=1))
    _aged(vault, "test/2025-12-30/.db_backup.sql.gz.enc.partial-bbbb", NOW - timedelta(hours=20))

    dry = run_cleanup(vault, POLICY, now=NOW, dry_run=True)
    assert dry.repair_lines() == [
        "would remove 1 stale partial file left by an interrupted write (2025-12-30)"
    ]
    assert stale.exists()

    run_cleanup(vault, POLICY, now=NOW)
    assert not stale.exists() and fresh.exists()


def test_cleanup_removes_no_orphan_while_backups_are_stale(vault):
    write_history(vault, date(2025, 1, 1), date(2025, 12, 1))
    vault.store.delete(vault.manifest_key(date(2025, 3, 12)))
    newest_finished = vault.list_manifests()[-1].finished_at

    result = run_cleanup(vault, POLICY, now=newest_finished + timedelta(hours=37))

    assert result.plan.blocked_reason is not None
    assert result.repairs == () and result.deleted_keys == ()
    assert result.kept_leftovers == (
        "kept 1 orphaned object (2025-03-12): nothing stored is deleted while backups are stale",
    )
    assert vault.store.get_bytes("test/2025-03-12/db_backup.sql.gz.enc") is not None


def test_cleanup_gives_up_in_one_line_when_the_retention_lock_stays_held(vault):
    write_history(vault, date(2025, 12, 1), date(2025, 12, 30))
    with vault.store.lock("test-retention"), pytest.raises(LockBusy) as refused:
        run_cleanup(vault, POLICY, now=NOW, wait_seconds=0.5)
    assert "\n" not in str(refused.value) and "test-retention is locked" in str(refused.value)
    assert len(vault.list_manifests()) == 30


def test_list_backups_shows_the_backup_standing_in_for_a_failed_sunday(local_env):
    settings = load_settings()
    store = Vault.from_settings(settings)
    for day in days_between(date(2025, 3, 1), date(2025, 3, 12)):
        if day != date(2025, 3, 9):  # that Sunday's backup failed
            write_backup(store, fake_manifest("test", day))

    rows = backup_rows(settings, days=None, now=NOW)
    tiers = {row["date"]: row["tier"] for row in rows}
    assert tiers["2025-03-10"] == "weekly" and tiers["2025-03-11"] == "daily"
    assert tiers["2025-03-01"] == "monthly" and tiers["2025-03-02"] == "weekly"
