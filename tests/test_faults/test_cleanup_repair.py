"""Cleanup repairs what killed runs left, and never what a running backup is still writing.

A cleanup killed between a manifest and its object leaves an object no manifest lists; the
next cleanup removes it (every version) and says so. Cleanup plans under the retention lock,
so a backup committing meanwhile is seen whole; it waits a bounded time for that lock.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from dagster import instance_for_test, materialize

from pgvault_assets.cli import main
from pgvault_assets.defs.resources import resource_defs
from pgvault_assets.engine.backup.cleanup import RepairKind, run_cleanup
from pgvault_assets.engine.backup.retention import plan_retention
from pgvault_assets.engine.basics.names import (
    RESTORE_VERIFIED_NAME,
    backup_lock_name,
    manifest_key,
    object_key,
    retention_lock_name,
)
from pgvault_assets.errors import LockBusy
from pgvault_assets.settings import load_settings
from tests.conftest import AwsEnv
from tests.test_defs.backup_history import fake_manifest, write_history
from tests.test_defs.single import retention_state
from tests.test_deploy import conftest as deploy_fixtures
from tests.test_engine.helpers import back_up, vault
from tests.test_faults.conftest import fill

locked_env = deploy_fixtures.locked_env  # a bucket with S3 Object Lock

# The cleanup runs at the instant its parent planned with (argv[1]): one clock, even across a
# midnight between the parent's plan and the child's start.
CLEAN_UP = (
    "import sys; from datetime import datetime; from pgvault_assets.engine.backup.cleanup import run_cleanup; "
    "from pgvault_assets.settings import load_settings; from tests.test_engine.helpers import vault; "
    "run_cleanup(vault(), load_settings().retention, now=datetime.fromisoformat(sys.argv[1]))"
)
BACK_UP = "import sys; from tests.test_engine.helpers import back_up; back_up(sys.argv[1])"


@pytest.fixture(params=["local", "s3"])
def store_env(request):
    return request.getfixturevalue("aws_env" if request.param == "s3" else "local_env")


def _today() -> date:
    return datetime.now(UTC).date()


def _keys(under: str) -> list[str]:
    return [o.key for o in vault().store.list(under)]


def expired_dailies(count: int, older_than_days: int = 45) -> list[date]:
    """Dates past a daily backup's 30 days and in no longer-kept tier (no Sunday, no 1st) when
    the backups around them exist; one standing alone is its month's copy unless older still."""
    found = []
    day = _today() - timedelta(days=older_than_days)
    while len(found) < count:
        if day.weekday() != 6 and day.day != 1:
            found.append(day)
        day -= timedelta(days=1)
    return found


def _orphan(day: date) -> None:
    """What a cleanup killed between the two deletions leaves: the object, not its manifest."""
    assert vault().store.delete(manifest_key("test", day))


def _all_versions(env: AwsEnv, prefix: str) -> list[dict]:
    listing = env.s3.list_object_versions(Bucket=env.bucket, Prefix=prefix)
    return listing.get("Versions", []) + listing.get("DeleteMarkers", [])


def test_cleanup_killed_between_a_manifest_and_its_object_is_repaired_and_reported_by_the_next(
    store_env, spawn_pgvault, capsys
) -> None:
    store = vault()
    write_history(store, _today() - timedelta(days=100), _today() - timedelta(days=1))
    now = datetime.now(UTC)
    first = plan_retention(store.list_manifests(), now.date(), load_settings().retention, now=now)
    doomed = first.delete[0].day  # the first backup the cleanup deletes
    store.store.put_bytes(f"test/{doomed}/{RESTORE_VERIFIED_NAME}", b"{}")

    child = spawn_pgvault(CLEAN_UP, now.isoformat(), pause_at="cleanup-object")
    child.wait_for_pause("cleanup-object")
    child.kill()
    assert _keys(f"test/{doomed}/") == [
        object_key("test", doomed),
        f"test/{doomed}/{RESTORE_VERIFIED_NAME}",
    ], "the kill did not land between the manifest and the object"

    assert main(["cleanup"]) == 0  # the killed holder's lock does not block it

    out = capsys.readouterr().out
    assert (
        "repaired: removed 2 orphaned objects of expired backups, left by an interrupted cleanup "
        f"({doomed})"
    ) in out
    assert _keys(f"test/{doomed}/") == []
    if isinstance(store_env, AwsEnv):
        assert _all_versions(store_env, f"test/{doomed}/") == []
    assert {m.date for m in vault().list_manifests()} == {d.day for d in first.keep}


def test_dry_run_reports_the_repair_and_changes_nothing(store_env, capsys) -> None:
    write_history(vault(), _today() - timedelta(days=100), _today() - timedelta(days=1))
    orphaned = expired_dailies(2, 60)
    for day in orphaned:
        _orphan(day)
    listed = len(vault().list_manifests())

    assert main(["cleanup", "--dry-run"]) == 0

    out = capsys.readouterr().out
    assert (
        "dry run: would remove 2 orphaned objects of expired backups, left by an interrupted "
        f"cleanup ({orphaned[1]}, {orphaned[0]})"
    ) in out
    assert all(_keys(object_key("test", day)) for day in orphaned)
    assert len(vault().list_manifests()) == listed

    assert main(["cleanup"]) == 0
    assert "repaired: removed 2 orphaned objects" in capsys.readouterr().out
    assert not any(_keys(object_key("test", day)) for day in orphaned)


def test_an_old_orphan_of_a_recent_date_is_left_alone_while_a_backup_of_that_date_runs(
    local_env,
) -> None:
    store = vault()
    write_history(store, _today() - timedelta(days=20), _today() - timedelta(days=1))
    day = _today() - timedelta(days=5)
    _orphan(day)  # a backup killed before its manifest two days ago
    two_days_ago = time.time() - 2 * 86400
    os.utime(local_env / "store" / object_key("test", day), (two_days_ago, two_days_ago))
    policy = load_settings().retention

    with store.store.lock(backup_lock_name("test", day)):
        held = run_cleanup(vault(), policy, now=datetime.now(UTC))

    assert held.repairs == ()
    assert held.kept_leftovers == (
        f"kept 1 leftover of {day}: a backup of that date is running; a later cleanup removes it",
    )
    assert _keys(object_key("test", day))

    released = run_cleanup(vault(), policy, now=datetime.now(UTC))
    (repair,) = released.repairs
    assert repair.kind is RepairKind.UNFINISHED_ORPHAN and repair.days == (day,)
    assert repair.describe() == (
        f"removed 1 orphaned object of backups interrupted before their manifest ({day})"
    )
    assert _keys(f"test/{day}/") == []


def test_the_plan_is_made_under_the_lock_so_a_backup_committing_meanwhile_is_seen_whole(
    store_env,
) -> None:
    writer = vault()
    write_history(writer, _today() - timedelta(days=60), _today() - timedelta(days=2))
    committing = fake_manifest("test", _today() - timedelta(days=1))
    cleaner = vault()
    asked = threading.Event()
    real_lock = cleaner.store.lock

    def lock_noting_the_wait(name: str, **kwargs):
        if name == retention_lock_name("test"):
            asked.set()
        return real_lock(name, **kwargs)

    cleaner.store.lock = lock_noting_the_wait  # type: ignore[method-assign]
    results = []
    cleanup = threading.Thread(
        target=lambda: results.append(
            run_cleanup(
                cleaner,
                load_settings().retention,
                now=datetime.now(UTC),
                wait_seconds=60,
            )
        )
    )
    with writer.store.lock(retention_lock_name("test")):  # as backup_database commits
        writer.store.put_bytes(committing.object_key, b"backup")
        cleanup.start()
        assert asked.wait(30)  # cleanup is waiting: whatever it plans, it plans after this
        writer.store.put_bytes(writer.manifest_key(committing.date), committing.to_json())
    cleanup.join(90)

    (result,) = results
    assert committing.date in {d.day for d in result.plan.keep}
    assert result.repairs == ()
    assert _keys(committing.object_key)


def test_cleanup_waits_for_a_briefly_held_retention_lock_then_runs(store_env) -> None:
    write_history(vault(), _today() - timedelta(days=100), _today() - timedelta(days=1))
    held = threading.Event()
    released_at: list[float] = []

    def backup_committing() -> None:
        with vault().store.lock(retention_lock_name("test")):
            held.set()
            time.sleep(2.5)
            released_at.append(time.monotonic())

    holder = threading.Thread(target=backup_committing)
    holder.start()
    assert held.wait(10)
    result = run_cleanup(vault(), load_settings().retention, now=datetime.now(UTC), wait_seconds=60)
    finished_at = time.monotonic()
    holder.join()

    assert released_at and finished_at >= released_at[0]
    assert result.deleted_backups and len(result.deleted_backups) == len(result.plan.delete)
    assert len(vault().list_manifests()) == len(result.plan.keep)


def test_cleanup_fails_in_one_line_when_a_backup_holds_the_lock_past_the_wait(
    store_env, make_database, spawn_pgvault
) -> None:
    source = make_database("conc")
    fill(source, 1_000)
    back_up(source)
    writer = spawn_pgvault(BACK_UP, source, pause_at="manifest")
    writer.wait_for_pause("manifest")  # object committed, manifest not yet: the lock is held
    listed = len(vault().list_manifests())

    with pytest.raises(LockBusy) as refused:
        run_cleanup(vault(), load_settings().retention, now=datetime.now(UTC), wait_seconds=1)

    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("test-retention is locked by") and "try again" in message
    assert len(vault().list_manifests()) == listed
    writer.kill()


def test_stale_multipart_uploads_are_aborted_except_those_of_a_running_backup(
    aws_env: AwsEnv,
) -> None:
    store = vault()
    write_history(store, _today() - timedelta(days=20), _today() - timedelta(days=1))
    abandoned, running = _today() - timedelta(days=3), _today() - timedelta(days=1)
    for day in (abandoned, running):
        aws_env.s3.create_multipart_upload(Bucket=aws_env.bucket, Key=object_key("test", day))
    policy = load_settings().retention
    # moto dates every upload in 2010, so an upload's own age is not what is tested here.
    two_days_later = datetime.now(UTC) + timedelta(days=2)
    dry = run_cleanup(vault(), policy, now=two_days_later, dry_run=True)
    assert dry.repair_lines() == [
        f"would abort 2 stale multipart uploads left by an interrupted backup ({abandoned}, {running})"
    ]
    assert len(_uploads(aws_env)) == 2

    with store.store.lock(backup_lock_name("test", running)):
        result = run_cleanup(vault(), policy, now=two_days_later)

    assert result.repair_lines() == [
        f"aborted 1 stale multipart upload left by an interrupted backup ({abandoned})"
    ]
    assert result.kept_leftovers == (
        f"kept 1 leftover of {running}: a backup of that date is running; "
        "a later cleanup removes it",
    )
    assert [u["Key"] for u in _uploads(aws_env)] == [object_key("test", running)]


def _uploads(env: AwsEnv) -> list[dict]:
    return env.s3.list_multipart_uploads(Bucket=env.bucket).get("Uploads", [])


def test_an_orphan_under_object_lock_is_kept_and_said_so_without_failing(
    locked_env: AwsEnv, capsys
) -> None:
    write_history(vault(), _today() - timedelta(days=10), _today() - timedelta(days=1))
    (day,) = expired_dailies(1, 400)  # alone in its month, so past even a monthly's days
    until = (datetime.now(UTC) + timedelta(days=3)).replace(second=0, microsecond=0)
    locked_env.s3.put_object(
        Bucket=locked_env.bucket,
        Key=object_key("test", day),
        Body=b"backup",
        ObjectLockMode="GOVERNANCE",
        ObjectLockRetainUntilDate=until,
    )

    assert main(["cleanup"]) == 0

    out = capsys.readouterr().out
    assert (
        f"kept 1 orphaned object under S3 Object Lock until {until:%Y-%m-%d %H:%M} UTC at the "
        f"latest; a cleanup after that removes it ({day})"
    ) in out
    assert "repaired:" not in out
    assert _keys(object_key("test", day))


def test_the_retention_asset_reports_its_repairs_in_metadata_and_the_run_log(local_env) -> None:
    store = vault()
    write_history(store, _today() - timedelta(days=100), _today() - timedelta(days=1))
    (doomed,) = expired_dailies(1, 60)
    _orphan(doomed)
    folder = local_env / "store" / "test" / (_today() - timedelta(days=1)).isoformat()
    partial = folder / ".db_backup.sql.gz.enc.partial-0123abcd"
    partial.write_bytes(b"half a dump")
    two_days_ago = time.time() - 2 * 86400
    os.utime(partial, (two_days_ago, two_days_ago))

    with instance_for_test() as instance:
        result = materialize([retention_state], instance=instance, resources=resource_defs())
        logged = [entry.user_message for entry in instance.all_logs(result.run_id)]

    assert result.success
    (materialization,) = result.asset_materializations_for_node("retention_state")
    metadata = materialization.metadata
    assert metadata["repaired_count"].value == 2
    assert metadata["repaired"].value == [
        {
            "kind": "expired_orphan",
            "keys": [object_key("test", doomed)],
            "summary": "removed 1 orphaned object of expired backups, left by an interrupted "
            f"cleanup ({doomed})",
        },
        {
            "kind": "stale_partial",
            "keys": [partial.relative_to(local_env / "store").as_posix()],
            "summary": "removed 1 stale partial file left by an interrupted write "
            f"({_today() - timedelta(days=1)})",
        },
    ]
    assert (
        f"repaired: removed 1 orphaned object of expired backups, left by an interrupted cleanup ({doomed})"
        in logged
    )
    assert not partial.exists() and _keys(f"test/{doomed}/") == []
    assert metadata["deleted_count"].value == len(metadata["deleted_keys"].value) // 2


# Cleanup dates leftovers by their files' modification times, which the kernel's clock sets.
@pytest.mark.external_clock
def test_a_kept_version_no_manifest_pins_is_removed_once_stale_and_the_pinned_one_kept(
    local_env, awkward_database, capsys
) -> None:
    """A local backup killed between keeping its version and its manifest leaves a hidden
    version: cleanup removes it once a day old, never the version the manifest reads."""
    from pgvault_assets.engine.restore.verify import verify_backup
    from tests.test_engine.helpers import DAY

    manifest = back_up(awkward_database)
    versions = local_env / "store" / "test" / DAY.isoformat() / ".versions"
    pinned = versions / f"db_backup.sql.gz.enc.{manifest.object_version_id}"
    assert pinned.exists()
    stale = versions / f"db_backup.sql.gz.enc.{uuid.uuid4().hex}"
    fresh = versions / f"db_backup.sql.gz.enc.{uuid.uuid4().hex}"
    for leftover in (stale, fresh):
        leftover.write_bytes(os.urandom(4096))
    now = time.time()  # the test's clock, not the file system's, dates both leftovers
    os.utime(fresh, (now, now))
    os.utime(stale, (now - 2 * 86400, now - 2 * 86400))

    assert main(["cleanup", "--dry-run"]) == 0
    assert "would remove 1 unpinned kept version" in capsys.readouterr().out
    assert stale.exists()

    assert main(["cleanup"]) == 0
    out = capsys.readouterr().out
    assert "repaired: removed 1 unpinned kept version that no manifest reads" in out
    assert not stale.exists() and fresh.exists() and pinned.exists()
    assert verify_backup(vault(), DAY, full=True).sha256 == manifest.sha256


def test_the_retention_asset_fails_in_one_line_when_the_store_is_unusable(
    local_env, monkeypatch
) -> None:
    not_a_folder = local_env / "store-is-a-file"
    not_a_folder.write_text("")
    monkeypatch.setenv("BACKUP_LOCAL_DIR", str(not_a_folder))
    with instance_for_test() as instance:
        result = materialize(
            [retention_state], instance=instance, resources=resource_defs(), raise_on_error=False
        )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    description = failure.step_failure_data.user_failure_data.description
    assert "BACKUP_LOCAL_DIR" in description and "\n" not in description
