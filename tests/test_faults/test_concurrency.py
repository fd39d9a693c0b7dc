"""Runs at once: two backups of one date, a backup during retention cleanup, a crashed holder.

One backup of a date runs at a time (a lock per date); retention cleanup and a backup's
commit (object, then manifest) exclude each other (the retention lock), so cleanup never
deletes what a backup is writing. Both locks outlive no holder: an flock dies with its
process, and an S3 lock whose holder died on this host is taken over at once.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from pgvault_assets.engine.backup.retention import apply_retention, plan_retention
from pgvault_assets.engine.basics.names import retention_lock_name
from pgvault_assets.engine.restore.verify import verify_backup
from pgvault_assets.errors import LockBusy
from pgvault_assets.settings import load_settings
from tests.test_engine.helpers import DAY, back_up, vault
from tests.test_faults.conftest import fill

BACK_UP = "import sys; from tests.test_engine.helpers import back_up; back_up(sys.argv[1])"


@pytest.fixture(params=["local", "s3"])
def store_env(request):
    return request.getfixturevalue("aws_env" if request.param == "s3" else "local_env")


@pytest.fixture
def source(make_database) -> str:
    url = make_database("conc")
    fill(url, 5_000)
    return url


def test_second_backup_of_a_date_refuses_while_the_first_runs_and_runs_once_it_crashed(
    store_env, source, spawn_pgvault
) -> None:
    first = spawn_pgvault(BACK_UP, source, pause_at="manifest")
    first.wait_for_pause("manifest")

    with pytest.raises(LockBusy, match=r"test-backup-.* is locked by pid \d+"):
        back_up(source)

    first.kill()  # a crashed holder: its lock must not outlive it
    manifest = back_up(source)
    assert [m.sha256 for m in vault().list_manifests()] == [manifest.sha256]
    assert verify_backup(vault(), DAY, full=True).sha256 == manifest.sha256


def test_cleanup_refuses_while_a_backup_commits_so_it_never_deletes_what_is_written(
    store_env, source, spawn_pgvault
) -> None:
    back_up(source)
    writer = spawn_pgvault(BACK_UP, source, pause_at="manifest")
    writer.wait_for_pause("manifest")  # object committed, manifest not yet written
    now = datetime.now(UTC)
    plan = plan_retention(vault().list_manifests(), now.date(), load_settings().retention, now=now)

    with pytest.raises(LockBusy, match="retention is locked"):
        apply_retention(vault(), plan)
    writer.kill()


def test_backup_started_during_cleanup_waits_for_it_before_committing(store_env, source) -> None:
    held = threading.Event()
    released_at: list[float] = []

    def cleanup_in_progress() -> None:
        with vault().store.lock(retention_lock_name("test")):
            held.set()
            time.sleep(2.5)
            released_at.append(time.monotonic())

    cleanup = threading.Thread(target=cleanup_in_progress)
    cleanup.start()
    assert held.wait(10)
    manifest = back_up(source)
    finished_at = time.monotonic()
    cleanup.join()

    assert released_at and finished_at >= released_at[0]
    assert verify_backup(vault(), DAY, full=True).sha256 == manifest.sha256
