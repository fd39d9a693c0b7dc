"""pgvault killed with SIGKILL in every stage, and the next run repairing what it left.

A killed process runs no cleanup: whatever it had half-done stays. What must hold anyway:
no half backup is ever listed, a restore target is the old or the new database and never
missing, and the next run removes the leftovers (partial files, unfinished multipart
uploads, scratch databases, a target left refusing connections) and logs that it did.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta

import psycopg
import pytest

from pgvault_assets.engine.backup.retention import apply_retention, plan_retention
from pgvault_assets.engine.basics.names import manifest_key, object_key
from pgvault_assets.engine.restore.restore import restore_backup
from pgvault_assets.engine.restore.verify import verify_backup
from pgvault_assets.engine.vault.manifest import encryption_context
from pgvault_assets.errors import IntegrityError
from pgvault_assets.settings import DatabaseUrl, load_settings
from tests.conftest import MAINTENANCE_URL, AwsEnv
from tests.test_engine.helpers import DAY, NOW, back_up, vault
from tests.test_faults.conftest import fill, wait_for

ROWS = 300_000  # about 12 MB stored: a first 8 MB part is uploaded while the dump still runs
BACK_UP = "import sys; from tests.test_engine.helpers import back_up; back_up(sys.argv[1])"
RESTORE = (
    "import sys; from pgvault_assets.engine.restore.restore import restore_backup; "
    "from pgvault_assets.settings import DatabaseUrl; from tests.test_engine.helpers import DAY, vault; "
    "restore_backup(vault(), DAY, DatabaseUrl(sys.argv[1]))"
)
# Retention applied at the instant its parent plans with (argv[1]): one clock for both.
CLEAN_UP = (
    "import sys; from datetime import datetime; from pgvault_assets.engine.backup.retention import "
    "apply_retention, plan_retention; from pgvault_assets.settings import load_settings; "
    "from tests.test_engine.helpers import vault; v = vault(); now = datetime.fromisoformat(sys.argv[1]); "
    "apply_retention(v, plan_retention(v.list_manifests(), now.date(), load_settings().retention, now=now))"
)


@pytest.fixture
def big_source(make_database) -> str:
    url = make_database("kill")
    fill(url, ROWS)
    return url


def _uploads(aws_env: AwsEnv) -> list[dict]:
    return aws_env.s3.list_multipart_uploads(Bucket=aws_env.bucket).get("Uploads", [])


def _parts_uploaded(aws_env: AwsEnv) -> bool:
    return any(
        aws_env.s3.list_parts(Bucket=aws_env.bucket, Key=u["Key"], UploadId=u["UploadId"]).get(
            "Parts"
        )
        for u in _uploads(aws_env)
    )


@pytest.mark.parametrize(("store", "stage"), [("local", "dump"), ("s3", "dump"), ("s3", "upload")])
def test_backup_killed_while_dumping_or_uploading_is_never_listed_and_the_next_run_repairs(
    request, big_source, spawn_pgvault, caplog, store: str, stage: str
) -> None:
    env = request.getfixturevalue("aws_env" if store == "s3" else "local_env")
    if stage == "upload":  # three parts: the kill lands while later ones are still to come
        with psycopg.connect(big_source, autocommit=True) as conn:
            conn.execute("INSERT INTO t SELECT * FROM t")
    previous = back_up(big_source)
    child = spawn_pgvault(BACK_UP, big_source)
    if store == "local":
        folder = env / "store" / "test" / DAY.isoformat()
        wait_for(lambda: list(folder.glob(".*partial*")), "the partial file")
    elif stage == "dump":
        wait_for(lambda: _uploads(env), "the multipart upload")
    else:
        wait_for(lambda: _parts_uploaded(env), "a first uploaded part")
    child.kill()
    if store == "s3":
        assert _uploads(env), "the backup finished its upload before the kill"

    assert [m.sha256 for m in vault().list_manifests()] == [previous.sha256]
    assert verify_backup(vault(), DAY, full=True).sha256 == previous.sha256
    with caplog.at_level(logging.WARNING, logger="pgvault_assets"):
        manifest = back_up(big_source)
    left = "partial file" if store == "local" else "unfinished multipart upload"
    assert f"removed 1 {left} an interrupted backup of {DAY}" in caplog.text
    assert verify_backup(vault(), DAY, full=True).sha256 == manifest.sha256
    if store == "local":
        assert not list(folder.glob(".*partial*"))
    else:
        assert _uploads(env) == []


@pytest.mark.parametrize("store", ["local", "s3"])
def test_backup_killed_before_its_manifest_keeps_the_previous_backup_listed_and_whole(
    store: str, request: pytest.FixtureRequest, make_database, spawn_pgvault
) -> None:
    request.getfixturevalue("local_env" if store == "local" else "aws_env")
    url = make_database("kill")
    fill(url, 20_000)
    previous = back_up(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (0, 'added after the first backup')")
    child = spawn_pgvault(BACK_UP, url, pause_at="manifest")
    child.wait_for_pause("manifest")  # the new object is committed, its manifest not yet written
    child.kill()

    assert [m.sha256 for m in vault().list_manifests()] == [previous.sha256]
    assert verify_backup(vault(), DAY, full=True).sha256 == previous.sha256
    manifest = back_up(url)
    assert manifest.table_rows == {"public.t": 20_001}
    assert verify_backup(vault(), DAY, full=True).sha256 == manifest.sha256


@pytest.fixture
def backed_up(local_env, big_source) -> str:
    back_up(big_source)
    return big_source


def _marked_target(make_database) -> tuple[str, int]:
    """A target with a marker table, and its database oid: what 'the old database' means."""
    url = make_database("staging")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE still_here (id int); INSERT INTO still_here VALUES (42)")
    return url, _oid(url)


def _oid(url: str) -> int:
    with psycopg.connect(MAINTENANCE_URL) as conn:
        row = conn.execute(
            "SELECT oid FROM pg_database WHERE datname = %s", (DatabaseUrl(url).dbname,)
        ).fetchone()
    assert row is not None, "the target database is missing"
    return int(row[0])


def _scratches(url: str) -> list[str]:
    with psycopg.connect(MAINTENANCE_URL) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
            (DatabaseUrl(url).dbname + "_restore_",),
        ).fetchall()
    return [r[0] for r in rows]


def _psql_restoring(url: str) -> bool:
    with psycopg.connect(MAINTENANCE_URL) as conn:
        return bool(
            conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE starts_with(datname, %s) "
                "AND application_name = 'psql'",
                (DatabaseUrl(url).dbname + "_restore_",),
            ).fetchall()
        )


def _restored(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM t").fetchone() == (ROWS,)


@pytest.mark.parametrize("stage", ["restore", "swap"])
def test_restore_killed_before_or_inside_the_swap_keeps_the_old_target_and_the_next_run_repairs(
    backed_up, make_database, spawn_pgvault, caplog, stage: str
) -> None:
    target, old_oid = _marked_target(make_database)
    if stage == "restore":
        child = spawn_pgvault(RESTORE, target)
        wait_for(lambda: _psql_restoring(target), "psql restoring into the scratch database")
    else:
        child = spawn_pgvault(RESTORE, target, pause_at="swap")
        child.wait_for_pause("swap")  # inside the rename transaction, target renamed away
    child.kill()

    wait_for(lambda: _oid(target) == old_oid, "the swap's transaction to roll back", timeout=10)
    assert len(_scratches(target)) == 1
    with caplog.at_level(logging.WARNING, logger="pgvault_assets"):
        result = restore_backup(vault(), DAY, DatabaseUrl(target))
    assert "the scratch database of an interrupted restore" in caplog.text
    if stage == "swap":
        assert "accepts connections again; a restore was interrupted in its swap" in caplog.text
    assert _restored(target) and _scratches(target) == []
    assert result.previous is not None


def test_killed_swap_leaves_the_old_target_usable_again_after_the_next_run_fails_early(
    backed_up, make_database, spawn_pgvault, local_env
) -> None:
    """Even a next run that fails before its own swap gives the old target its clients back."""
    target, _ = _marked_target(make_database)
    child = spawn_pgvault(RESTORE, target, pause_at="swap")
    child.wait_for_pause("swap")
    child.kill()
    key = local_env / "store" / manifest_key("test", DAY)
    key.write_bytes(key.read_bytes().replace(b'"size_bytes": ', b'"size_bytes": 1'))

    # Both the dump's and the server context's sizes were falsified: the context is read first.
    with pytest.raises(
        IntegrityError,
        match=rf"^the server context of backup {DAY} does not match its manifest's size",
    ):
        restore_backup(vault(), DAY, DatabaseUrl(target))
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT id FROM still_here").fetchone() == (42,)


def test_cleanup_killed_midway_lists_no_backup_without_its_object_and_the_next_run_finishes(
    aws_env: AwsEnv, make_database, spawn_pgvault
) -> None:
    url = make_database("small")
    fill(url, 10)
    newest = back_up(url)
    expired = []
    for age in range(40, 100):  # 60 old backups: most of them past the 30 days of a daily
        day = DAY - timedelta(days=age)
        forged = replace(
            newest,
            date=day,
            object_key=object_key("test", day),
            encryption_context=encryption_context("test", day),
            server_context=None,  # an older backup, taken before server contexts
        )
        aws_env.s3.put_object(Bucket=aws_env.bucket, Key=forged.object_key, Body=b"old backup")
        aws_env.s3.put_object(
            Bucket=aws_env.bucket, Key=manifest_key("test", day), Body=forged.to_json()
        )
        expired.append(day)
    before = len(vault().list_manifests())
    now = NOW  # the instant DAY was backed up against, handed to the child too
    child = spawn_pgvault(CLEAN_UP, now.isoformat())
    wait_for(lambda: len(_manifest_keys(aws_env)) <= before - 3, "the first deletions")
    child.kill()

    listed = vault().list_manifests()
    assert 0 < before - len(listed) < before - 10, "the kill did not land midway"
    for manifest in listed:  # every listed backup still has its object
        aws_env.s3.head_object(Bucket=aws_env.bucket, Key=manifest.object_key)
    plan = plan_retention(listed, now.date(), load_settings().retention, now=now)
    apply_retention(vault(), plan)  # the crashed run's lock does not block the next one
    remaining = {m.date for m in vault().list_manifests()}
    assert not {d.day for d in plan.delete} & remaining
    assert newest.date in remaining


def _manifest_keys(aws_env: AwsEnv) -> list[str]:
    pages = aws_env.s3.get_paginator("list_objects_v2").paginate(Bucket=aws_env.bucket)
    return [
        o["Key"] for p in pages for o in p.get("Contents", []) if o["Key"].endswith("manifest.json")
    ]
