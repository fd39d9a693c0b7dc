"""Nothing is lost or half-written: tampered backups are refused, failed runs leave no trace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from pgvault_assets.engine.backup.backup import backup_database
from pgvault_assets.engine.basics.names import manifest_key, object_key, server_context_key
from pgvault_assets.engine.postgres.postgres import DatabaseUnavailable
from pgvault_assets.engine.restore.restore import restore_backup
from pgvault_assets.engine.restore.verify import verify_backup
from pgvault_assets.engine.vault.manifest import Manifest, encryption_context
from pgvault_assets.errors import (
    BackupFailed,
    BackupNotFound,
    ConfigError,
    IntegrityError,
    KeyUnavailable,
    LockBusy,
    RestoreFailed,
)
from pgvault_assets.settings import DatabaseUrl
from tests.test_engine.helpers import DAY, NOW, back_up, marked, marker_intact, vault


def _siblings(url: str) -> list[str]:
    name = DatabaseUrl(url).dbname
    with psycopg.connect(DatabaseUrl(url).with_dbname("postgres").secret) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) AND datname <> %s",
            (name, name),
        ).fetchall()
    return [r[0] for r in rows]


def _object_path(store: Path, day=DAY) -> Path:
    return store / object_key("test", day)


@pytest.mark.parametrize("mutation", ["flip", "truncate", "append"])
def test_corrupted_backup_is_refused_before_restore(
    local_env, awkward_database, make_database, mutation
):
    back_up(awkward_database)
    path = _object_path(local_env / "store")
    data = bytearray(path.read_bytes())
    if mutation == "flip":
        data[len(data) // 2] ^= 0x01
    elif mutation == "truncate":
        del data[-1000:]
    else:
        data += b"\0"
    path.write_bytes(bytes(data))
    target = marked(make_database("staging"))

    with pytest.raises(IntegrityError, match="do not restore it"):
        restore_backup(vault(), DAY, DatabaseUrl(target), full_verify=False)

    assert marker_intact(target)
    assert _siblings(target) == []


def test_flipped_byte_with_a_matching_lying_manifest_fails_authentication(
    local_env, awkward_database, make_database
):
    """An attacker who rewrites the manifest's checksum too is still stopped by the AEAD tags."""
    manifest = back_up(awkward_database)
    path = _object_path(local_env / "store")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    import hashlib

    lying = replace(manifest, sha256=hashlib.sha256(data).hexdigest())
    (local_env / "store" / manifest_key("test", DAY)).write_bytes(lying.to_json())
    target = marked(make_database("staging"))

    with pytest.raises(IntegrityError, match="authenticated decryption"):
        restore_backup(vault(), DAY, DatabaseUrl(target), full_verify=True)
    with pytest.raises(IntegrityError):
        restore_backup(vault(), DAY, DatabaseUrl(target), full_verify=False)

    assert marker_intact(target)
    assert _siblings(target) == []


def test_backup_of_another_day_is_refused_by_its_encryption_context(
    local_env, awkward_database, make_database
):
    """Copying day D's objects and manifest to another date is caught: the context names D."""
    manifest = back_up(awkward_database)
    assert manifest.server_context is not None
    other = DAY - timedelta(days=3)
    store = local_env / "store"
    _object_path(store, other).parent.mkdir(parents=True)
    _object_path(store, other).write_bytes(_object_path(store).read_bytes())
    (store / server_context_key("test", other)).write_bytes(
        (store / manifest.server_context.object_key).read_bytes()
    )
    forged = replace(
        manifest,
        date=other,
        object_key=object_key("test", other),
        encryption_context=encryption_context("test", other),
        object_version_id=None,  # the copies are plain files there, with no kept version
        server_context=replace(
            manifest.server_context,
            object_key=server_context_key("test", other),
            object_version_id=None,
        ),
    )
    (store / manifest_key("test", other)).write_bytes(forged.to_json())
    target = marked(make_database("staging"))

    with pytest.raises(IntegrityError, match="encryption context differs in date"):
        restore_backup(vault(), other, DatabaseUrl(target), full_verify=True)
    assert marker_intact(target)


def test_manifest_that_lies_about_row_counts_fails_the_restore_and_keeps_the_target(
    local_env, awkward_database, make_database
):
    manifest = back_up(awkward_database)
    rows = dict(manifest.table_rows)
    rows["public.users"] += 1
    (local_env / "store" / manifest_key("test", DAY)).write_bytes(
        replace(manifest, table_rows=rows).to_json()
    )
    target = marked(make_database("staging"))

    with pytest.raises(RestoreFailed, match=r"public\.users"):
        restore_backup(vault(), DAY, DatabaseUrl(target))

    assert marker_intact(target)
    assert _siblings(target) == []


@pytest.mark.parametrize("garbage", [b"", b"{", b"[]", b'{"sha256": "x"}'])
def test_malformed_manifest_is_refused(local_env, awkward_database, garbage):
    back_up(awkward_database)
    (local_env / "store" / manifest_key("test", DAY)).write_bytes(garbage)
    with pytest.raises(IntegrityError, match="do not restore"):
        verify_backup(vault(), DAY)


@pytest.mark.parametrize("key_id", ["loc`l:a84480bed7301540", "alias/backups", ""])
def test_a_manifest_naming_no_key_a_backup_could_have_is_refused(
    local_env, awkward_database, key_id
):
    """Found by the mutation fuzz: a damaged key id went to KMS and came back a traceback."""
    manifest = back_up(awkward_database)
    (local_env / "store" / manifest_key("test", DAY)).write_bytes(
        replace(manifest, key_id=key_id).to_json()
    )
    with pytest.raises(IntegrityError, match="do not restore"):
        verify_backup(vault(), DAY, full=True)


def test_wrong_local_key_is_refused_with_its_fingerprint(local_env, awkward_database):
    back_up(awkward_database)
    key = local_env / "key" / "backup.key"
    key.write_bytes(os.urandom(32))
    with pytest.raises(KeyUnavailable, match="BACKUP_LOCAL_KEY_FILE"):
        verify_backup(vault(), DAY)


def test_key_file_readable_by_others_is_refused(local_env, awkward_database):
    back_up(awkward_database)
    (local_env / "key" / "backup.key").chmod(0o644)
    with pytest.raises(KeyUnavailable, match="chmod 600"):
        verify_backup(vault(), DAY)


def test_missing_backup_says_how_to_find_one(local_env):
    with pytest.raises(BackupNotFound, match="list-backups"):
        verify_backup(vault(), DAY)


@pytest.mark.parametrize("offset", [-1, 1, 2])
def test_only_the_latest_complete_day_can_be_backed_up(local_env, awkward_database, offset):
    day = DAY + timedelta(days=offset)
    with pytest.raises(ConfigError, match=DAY.isoformat()):
        backup_database(vault(), DatabaseUrl(awkward_database), day, now=lambda: NOW)
    assert not (local_env / "store" / "test").exists() or not list(
        (local_env / "store" / "test").rglob("manifest.json")
    )


def test_unreachable_database_fails_in_one_line_without_its_password(local_env):
    url = DatabaseUrl("postgresql://app:hunter2-secret@127.0.0.1:1/app")
    with pytest.raises(DatabaseUnavailable) as caught:
        backup_database(vault(), url, DAY, now=lambda: NOW)
    message = str(caught.value)
    assert "hunter2" not in message and "\n" not in message
    assert "127.0.0.1" in message


def test_password_in_url_never_reaches_manifest_or_store(local_env, awkward_database):
    name = DatabaseUrl(awkward_database).dbname
    url = f"postgresql://postgres:hunter2-secret@127.0.0.1:5432/{name}"  # trust auth ignores it
    back_up(url)
    for path in (local_env / "store").rglob("*"):
        if path.is_file():
            assert b"hunter2" not in path.read_bytes()


def test_pg_dump_killed_midway_records_no_backup_and_keeps_the_previous_one(
    local_env, make_database
):
    url = make_database("big")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t AS SELECT i, md5(i::text) AS s FROM generate_series(1, 1500000) i"
        )
    first = back_up(url)
    stop = threading.Event()

    def kill_pg_dump() -> None:
        with psycopg.connect(
            DatabaseUrl(url).with_dbname("postgres").secret, autocommit=True
        ) as conn:
            while not stop.is_set():
                if conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pg_dump' AND datname = %s",
                    (DatabaseUrl(url).dbname,),
                ).fetchall():
                    return
                time.sleep(0.01)

    killer = threading.Thread(target=kill_pg_dump)
    killer.start()
    try:
        with pytest.raises(BackupFailed, match="pg_dump failed"):
            back_up(url)
    finally:
        stop.set()
        killer.join()

    assert verify_backup(vault(), DAY).sha256 == first.sha256
    assert not list((local_env / "store").rglob(".*partial*"))


def test_backup_process_killed_midway_is_not_listed_and_the_next_run_succeeds(
    local_env, make_database
):
    url = make_database("big")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t AS SELECT i, md5(i::text) AS s FROM generate_series(1, 3000000) i"
        )
    script = "from tests.test_engine.helpers import back_up; import sys; back_up(sys.argv[1])"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, url], env=os.environ.copy(), cwd=Path(__file__).parents[2]
    )
    folder = local_env / "store" / "test" / DAY.isoformat()
    deadline = time.monotonic() + 60
    while not list(folder.glob(".*partial*")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(folder.glob(".*partial*")), "the backup never started writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    assert vault().list_manifests() == []
    manifest = back_up(url)
    assert [m.date for m in vault().list_manifests()] == [DAY]
    assert not list(folder.glob(".*partial*"))  # the next run cleaned up what the killed one left
    assert verify_backup(vault(), DAY).sha256 == manifest.sha256


def test_two_backups_of_one_date_never_interleave(local_env, awkward_database):
    v = vault()
    with (
        v.store.lock(f"test-backup-{DAY.isoformat()}"),
        pytest.raises(LockBusy, match="wait for it"),
    ):
        back_up(awkward_database)


def test_rerun_replaces_the_backup_only_when_complete(local_env, awkward_database):
    first = back_up(awkward_database)
    with psycopg.connect(awkward_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE added_later (id int)")
    second = back_up(awkward_database)
    assert second.sha256 != first.sha256
    assert verify_backup(vault(), DAY).sha256 == second.sha256
    assert (
        "public.added_later"
        in json.loads((local_env / "store" / manifest_key("test", DAY)).read_bytes())["table_rows"]
    )
    assert (
        Manifest.from_json((local_env / "store" / manifest_key("test", DAY)).read_bytes()).sha256
        == second.sha256
    )


def test_a_failed_dump_is_explained_by_its_error_line_not_the_detail_after_it():
    from pgvault_assets.engine.backup.backup import pg_dump_reason

    stderr = [
        "pg_dump: error: query failed: FATAL:  terminating connection due to administrator command",
        "pg_dump: detail: Query was: LOCK TABLE public.users IN ACCESS SHARE MODE",
        "",
    ]
    assert pg_dump_reason(stderr, 1) == (
        "error: query failed: FATAL:  terminating connection due to administrator command"
    )
    assert pg_dump_reason(["pg_dump: something odd"], 1) == "something odd"
    assert pg_dump_reason([], 137) == "exit status 137"


def test_restores_and_a_rollback_in_one_second_keep_every_replaced_database_newest_first(
    local_env, awkward_database, make_database
):
    from pgvault_assets.engine.postgres.postgres import previous_databases
    from pgvault_assets.engine.restore.swap import rollback_restore

    back_up(awkward_database)
    target = DatabaseUrl.parse(make_database("target"), "target")
    same_second = lambda: NOW  # noqa: E731
    first = restore_backup(vault(), DAY, target, now=same_second)
    second = restore_backup(vault(), DAY, target, now=same_second)
    assert first.previous and second.previous and first.previous != second.previous
    assert previous_databases(target)[:2] == [second.previous, first.previous]
    swapped_in, kept_as = rollback_restore(target, now=same_second)
    assert swapped_in == second.previous and kept_as not in (first.previous, second.previous)


def test_a_run_gives_its_claim_on_the_target_back_before_its_connection_closes(
    make_database, monkeypatch: pytest.MonkeyPatch
):
    """A backend frees its locks only once it has exited, after the client has moved on: a
    restore that followed another at once found the target still claimed (LockBusy). The claim
    is released while the connection is still open, which this test sees at the moment it
    would close."""
    from contextlib import contextmanager

    from pgvault_assets.engine.basics.names import restore_claim
    from pgvault_assets.engine.restore import swap

    target = DatabaseUrl.parse(make_database("target"), "target")
    held_at_close: list[bool] = []
    real_connect = swap.connect

    @contextmanager
    def connect_watching_the_claim(url, **options):
        with real_connect(url, **options) as conn:
            yield conn
            with psycopg.connect(target.with_dbname("postgres").secret) as watcher:
                held_at_close.append(
                    watcher.execute(
                        "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory'"
                        " AND pid = %s AND objid::int = hashtext(%s)",
                        (conn.info.backend_pid, restore_claim(target.dbname)),
                    ).fetchone()[0]
                )

    monkeypatch.setattr(swap, "connect", connect_watching_the_claim)
    with swap.claimed_target(target.with_dbname("postgres"), target.dbname) as (conn, _):
        assert (
            conn.execute(
                "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()"
                " AND locktype = 'advisory'"
            ).fetchone()[0]
            == 1
        )  # claimed

    assert held_at_close == [False]
