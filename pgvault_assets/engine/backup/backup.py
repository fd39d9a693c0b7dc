"""One backup: pg_dump in an exported snapshot → pipeline → store, manifest last."""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import date, datetime
from typing import IO

import psycopg

import pgvault_assets
from pgvault_assets.engine.basics import names
from pgvault_assets.engine.basics.clock import Clock, latest_complete_day, utcnow
from pgvault_assets.engine.basics.interrupts import CHILD_GROUP, Interrupted, said_as
from pgvault_assets.engine.basics.names import backup_lock_name, retention_lock_name
from pgvault_assets.engine.basics.testpoints import pause_point
from pgvault_assets.engine.postgres import server_context as sc
from pgvault_assets.engine.postgres import shape
from pgvault_assets.engine.postgres.postgres import (
    check_tool_fits_server,
    connect,
    connection_loss_raises,
    lock_holders,
    server_version,
    tool_env,
    user_tables,
)
from pgvault_assets.engine.storage.immutability import backup_retain_until
from pgvault_assets.engine.vault import manifest as mf
from pgvault_assets.engine.vault.copy_rows import CopyRowCounter
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.engine.vault.pipeline import Progress, encrypt_stream
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import (
    BackupFailed,
    BackupNotFound,
    ConfigError,
    PgvaultError,
    StoreError,
)
from pgvault_assets.settings import DatabaseUrl

log = logging.getLogger(__name__)
DEFAULT_LOCK_WAIT_SECONDS = 120
# Retention cleanup is short; a backup ready to commit waits this long for it to finish.
RETENTION_WAIT_SECONDS = 15 * 60


def check_backup_date(day: date, now: datetime) -> None:
    """Only yesterday (UTC) may be backed up: a dump taken now holds today's data, not D's."""
    latest = latest_complete_day(now)
    if day > latest:
        raise ConfigError(
            f"{day.isoformat()} is not complete yet; the latest day that can be backed up is {latest.isoformat()}"
        )
    if day < latest:
        raise ConfigError(
            f"{day.isoformat()} is in the past: a dump taken now would hold today's data labelled as "
            f"{day.isoformat()}; only {latest.isoformat()} can be backed up now"
        )


def _tail_reader(stream: IO[bytes], lines: deque[str]) -> None:
    for raw in iter(stream.readline, b""):
        lines.append(raw.decode(errors="replace").rstrip())


def _dump_failure(lines: Iterable[str], code: int, url: DatabaseUrl, lock_wait: int) -> str:
    """pg_dump's reason; for a lock it waited out, which table and who held it."""
    lines = list(lines)
    waited = re.search(r"LOCK TABLE (\S+) IN ACCESS SHARE MODE", " ".join(lines))
    if waited and any(("statement timeout" in line or "lock timeout" in line) for line in lines):
        table = waited.group(1)
        return (
            f"pg_dump waited {lock_wait} s for a lock on {table} and gave up, held by "
            f"{lock_holders(url, table)} (BACKUP_LOCK_WAIT_SECONDS); the retry comes later"
        )
    return f"pg_dump failed ({pg_dump_reason(lines, code)})"


def pg_dump_reason(lines: Iterable[str], code: int) -> str:
    """pg_dump's own error line: its `detail:` and `hint:` lines follow it and say less."""
    lines = [line.removeprefix("pg_dump: ") for line in lines if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "fatal:"))]
    return (errors or lines or [f"exit status {code}"])[-1]


def _refuse_overwrite_in_place(vault: Vault, day: date) -> None:
    """A re-run's upload replaces the stored backup before its manifest is written: where the
    store keeps no earlier version, a crash in between would leave the date with no readable
    backup at all."""
    reason = vault.store.overwrite_unprotected(names.manifest_key(vault.environment, day))
    if reason is not None:
        raise BackupFailed(
            f"{day.isoformat()} is already backed up and {reason}, "
            "so a re-run would overwrite that backup in place; enable versioning "
            "(pgvault init-storage) or keep the backup you have"
        )


def _stored_backup(vault: Vault, day: date) -> Manifest | None:
    """The backup `day` holds now, which a re-run replaces; None when there is none, or when
    its manifest cannot be read (said: a damaged record must not stop every later backup)."""
    try:
        return vault.read_manifest(day)
    except BackupNotFound:
        return None
    except PgvaultError as exc:
        log.warning("the backup of %s is replaced, its record unreadable: %s", day, exc)
        return None


def _latest_backup(
    vault: Vault, backed_up: list[date], day: date, stored: Manifest | None
) -> Manifest | None:
    """The newest backup of the namespace, whose source the next backup must come from; None
    when there is none or its record cannot be read (a source unknown refuses nothing)."""
    newest = backed_up[-1] if backed_up else None
    if stored is not None and (newest is None or newest <= day):
        return stored
    if newest is None or newest == day:
        return None
    try:
        return vault.read_manifest(newest)
    except PgvaultError:
        return None


def _source_of(conn: psycopg.Connection) -> mf.SourceIdentity:
    """The cluster, name and oid of the database `conn` is on; the cluster's identifier only
    where the role may read it (a managed server may revoke pg_control_system)."""
    row = conn.execute(
        "SELECT CASE WHEN has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')"
        " THEN (SELECT system_identifier::text FROM pg_catalog.pg_control_system()) END,"
        " current_database(),"
        " (SELECT oid::bigint FROM pg_catalog.pg_database WHERE datname = current_database())"
    ).fetchone()
    if row is None:  # a SELECT without FROM always returns its row
        raise BackupFailed("PostgreSQL did not say which database this is; no backup was recorded")
    return mf.SourceIdentity(row[0], row[1], row[2])


def _check_source(
    namespace: str, latest: Manifest | None, source: mf.SourceIdentity, *, accept_new: bool
) -> bool:
    """Refuse a backup of another database than the namespace's backups come from, unless the
    operator accepts it as the new source; True when it was accepted so. A latest backup of
    unknown source (written before sources were recorded) refuses nothing."""
    if latest is None or latest.source is None:
        return False
    known = latest.source
    if not known.other_database_than(source):
        if known.database_oid != source.database_oid:
            log.warning(
                "database %s was recreated since the backup of %s (oid %d, now %d); "
                "it is backed up as the same source",
                source.database,
                latest.date.isoformat(),
                known.database_oid,
                source.database_oid,
            )
        return False
    if accept_new:
        log.warning(
            "%s now backs up %s, accepted as its new source (was %s)",
            namespace,
            source.describe(),
            known.describe(),
        )
        return True
    raise ConfigError(
        f"the backups of {namespace} come from {known.describe()} (latest "
        f"{latest.date.isoformat()}), not {source.describe()}; check DATABASE_URL (or the fleet "
        "file) and ENVIRONMENT_NAME, or if this database is now the source (restored onto a new "
        "server, say) run: pgvault backup --accept-new-source"
    )


def _clean_partials(vault: Vault, day: date) -> int:
    """Remove what a killed run of this date left behind, and say so; we hold the date's lock."""
    store = vault.store
    removed = 0
    what = ""
    with contextlib.suppress(StoreError):  # best effort: cleanup removes them later
        for upload in store.pending_uploads(f"{vault.environment}/{day.isoformat()}/"):
            store.abort_upload(upload)
            removed += 1
            what = upload.kind.value
    if removed:
        log.warning(
            "removed %d %s%s an interrupted backup of %s left behind",
            removed,
            what,
            "s" if removed > 1 else "",
            day.isoformat(),
        )
    return removed


Committed = list[tuple[str, str | None, str | None]]
"""Each object version a run committed, as (key, version id, the version the date's manifest
records for that key), until the run's manifest records them."""


@contextlib.contextmanager
def _withdrawn_if_interrupted(vault: Vault, day: date) -> Iterator[Committed]:
    """A signal before the manifest is written withdraws what the run committed (the object,
    its server context), so the store is as it was; clear the list before the manifest write.
    Further signals are only noted meanwhile (`interrupts`), so none cuts this short."""
    committed: Committed = []
    try:
        yield committed
    except Interrupted as exc:
        locked, failed = [], []
        for key, version_id, back_to in committed:
            try:
                if not vault.store.withdraw(key, version_id, back_to):
                    locked.append(key)
            except StoreError as error:
                failed.append(f"{key} stays until cleanup removes it ({error})")
        if locked:
            failed.insert(
                0, f"{' and '.join(locked)} stays until its Object Lock ends and cleanup removes it"
            )
        if failed:
            raise exc.saying(
                f"backup of {day.isoformat()} interrupted: no backup was recorded, the previous "
                f"one is intact; an unrecorded version of {'; of '.join(failed)}",
                settled=True,
            ) from None
        raise


def backup_database(
    vault: Vault,
    url: DatabaseUrl,
    day: date,
    *,
    now: Clock = utcnow,
    level: int = 2,
    progress: Progress | None = None,
    enforce_date: bool = True,
    role_passwords: bool = True,
    lock_wait_seconds: int = DEFAULT_LOCK_WAIT_SECONDS,
    accept_new_source: bool = False,
) -> Manifest:
    """Back up `url` as the backup of `day`; return the manifest once it is written.

    The object becomes a backup only when its manifest is written, after the object is
    complete; until then, a previous backup of the same date stays intact and listed.
    The server context (roles, database properties, extensions) is read in the dump's
    snapshot and stored beside it, with role password hashes unless `role_passwords` is off.

    A backup of another database than the namespace's latest backup is refused before the
    dump unless `accept_new_source`. A re-run of a date says whose backup it replaces, and
    keeps that one's object (and what it replaced) stored and listed until retention.

    A signal (`Interrupted`) ends pg_dump and aborts the upload on its way out.
    """
    with said_as(
        f"backup of {day.isoformat()} interrupted: no backup was recorded, "
        "the previous one is intact"
    ):
        return _backup_database(
            vault,
            url,
            day,
            now=now,
            level=level,
            progress=progress,
            enforce_date=enforce_date,
            role_passwords=role_passwords,
            lock_wait_seconds=lock_wait_seconds,
            accept_new_source=accept_new_source,
        )


def _backup_database(
    vault: Vault,
    url: DatabaseUrl,
    day: date,
    *,
    now: Clock,
    level: int,
    progress: Progress | None,
    enforce_date: bool,
    role_passwords: bool,
    lock_wait_seconds: int,
    accept_new_source: bool,
) -> Manifest:
    started_at = now()
    if enforce_date:
        check_backup_date(day, started_at)
    keys = vault.encryption_keys()
    context = mf.encryption_context(vault.environment, day)
    backed_up = vault.backup_dates()
    retain_until = backup_retain_until(day, vault.retention, now=started_at, backed_up=backed_up)
    expected_bytes = vault.size_before(day, backed_up)
    with vault.store.lock(backup_lock_name(vault.environment, day)) as date_lock:
        _clean_partials(vault, day)
        _refuse_overwrite_in_place(vault, day)
        stored = _stored_backup(vault, day)
        latest = _latest_backup(vault, backed_up, day, stored)
        with contextlib.ExitStack() as committing:
            with (
                connection_loss_raises(
                    BackupFailed,
                    "the backup",
                    "no backup was recorded, the previous one is intact",
                ),
                connect(url, autocommit=False) as conn,
            ):
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                conn.read_only = True
                row = conn.execute("SELECT pg_export_snapshot()").fetchone()
                if row is None:
                    raise BackupFailed(
                        "PostgreSQL exported no snapshot to dump; "
                        "no backup was recorded, the previous one is intact"
                    )
                snapshot = row[0]
                source = _source_of(conn)
                new_source = _check_source(
                    vault.environment, latest, source, accept_new=accept_new_source
                )
                major, version = server_version(conn)
                pg_dump, pg_dump_version = check_tool_fits_server("pg_dump", major)
                context_of_server = replace(
                    sc.capture(conn, include_passwords=role_passwords),
                    objects=shape.read_objects(conn),
                )
                # The tables the restore will count, named in the dump's own snapshot; their
                # rows come from the dump's COPY blocks, so no table is read twice.
                tables = [f"{schema}.{table}" for schema, table in user_tables(conn)]
                # pg_dump writes in the database's encoding, as this session reads it.
                rows = CopyRowCounter(conn.info.encoding)

                # Opened before pg_dump starts: a store that refuses leaves nothing running.
                writer = vault.store.open_writer(
                    vault.object_key(day), retain_until=retain_until, expected_bytes=expected_bytes
                )
                errors: deque[str] = deque(maxlen=20)
                try:
                    proc = subprocess.Popen(
                        [
                            pg_dump,
                            "--no-password",
                            "--format=plain",
                            f"--snapshot={snapshot}",
                            # Never queue behind a migration's lock: every application query
                            # would then queue behind the dump. Give up, and retry later.
                            f"--lock-wait-timeout={lock_wait_seconds * 1000}",
                        ],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        env=tool_env(url),
                        bufsize=1024 * 1024,
                        **CHILD_GROUP,
                    )
                except BaseException:
                    writer.abort()
                    raise
                dump, dump_errors = proc.stdout, proc.stderr
                if dump is None or dump_errors is None:  # never with PIPE; the types allow it
                    proc.kill()
                    writer.abort()
                    raise BackupFailed(
                        "pg_dump started without its output pipes; "
                        "no backup was recorded, the previous one is intact"
                    )
                stderr_thread = threading.Thread(
                    target=_tail_reader, args=(dump_errors, errors), daemon=True
                )
                stderr_thread.start()
                try:
                    pause_point("dump")
                    result = encrypt_stream(
                        dump, writer, keys, context, level=level, progress=progress, rows=rows
                    )
                    code = proc.wait()
                    stderr_thread.join(5)
                    if code != 0:
                        raise BackupFailed(
                            _dump_failure(errors, code, url, lock_wait_seconds)
                            + "; no backup was recorded, the previous one is intact"
                        )
                    counts = {table: rows.counts.get(table, 0) for table in tables}
                    # The dump is read: end its snapshot before waiting for any lock of ours,
                    # so production's vacuum is not held back meanwhile.
                    conn.rollback()
                    # From the object's commit to its manifest, retention must not delete this date.
                    retention_lock = committing.enter_context(
                        vault.store.lock(
                            retention_lock_name(vault.environment),
                            wait_seconds=RETENTION_WAIT_SECONDS,
                        )
                    )
                    # A lock lost meanwhile (S3 unreachable for a lease) may have let another
                    # run of this date start: it must not find a half-replaced object.
                    date_lock.check()
                    committed = committing.enter_context(_withdrawn_if_interrupted(vault, day))
                    version_id = writer.commit()
                    committed.append(
                        (
                            vault.object_key(day),
                            version_id,
                            stored.object_version_id if stored else None,
                        )
                    )
                    context_record = sc.store_context(
                        vault, day, context_of_server, level=level, retain_until=retain_until
                    )
                    committed.append(
                        (
                            context_record.object_key,
                            context_record.object_version_id,
                            stored.server_context.object_version_id
                            if stored and stored.server_context
                            else None,
                        )
                    )
                except BaseException:
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait()
                    writer.abort()
                    raise
            finished_at = now()
            manifest = Manifest(
                environment=vault.environment,
                date=day,
                object_key=vault.object_key(day),
                sha256=result.sha256,
                size_bytes=result.stored_bytes,
                dump_size_bytes=result.dump_bytes,
                compressed_size_bytes=result.compressed_bytes,
                started_at=started_at,
                finished_at=finished_at,
                stage_seconds={
                    **result.stage_seconds,
                    "total": round((finished_at - started_at).total_seconds(), 3),
                },
                server_version=version,
                pg_dump_version=pg_dump_version,
                database=url.dbname,
                table_rows=counts,
                rows_exclude_children=True,
                key_id=keys.key_id,
                pgvault_version=pgvault_assets.__version__,
                object_version_id=version_id,
                compression_level=level,
                encryption_context=context,
                server_major=major,
                server_context=context_record,
                source=source,
                new_source=new_source,
            )
            if stored is not None:
                manifest = manifest.replacing(stored)
            pause_point("manifest")
            date_lock.check()
            retention_lock.check()
            # Not withdrawn from here on: a signal during the write may land once it is written.
            committed.clear()
            vault.store.put_bytes(
                vault.manifest_key(day), manifest.to_json(), retain_until=retain_until
            )
            if stored is not None:
                log.warning(
                    "the backup of %s replaced the one taken at %s (sha256 %s…), kept until "
                    "retention: pgvault list-backups --versions",
                    day.isoformat(),
                    f"{stored.finished_at:%Y-%m-%d %H:%M:%S} UTC",
                    stored.sha256[:12],
                )
            # Versions no manifest pins (a killed run's) go; the replaced backups' stay.
            with said_as(
                f"backup of {day.isoformat()} was recorded, then interrupted while removing "
                "versions no backup records; cleanup removes those later",
                settled=True,
            ):
                vault.store.prune_versions(
                    vault.object_key(day), {m.object_version_id for m in manifest.versions}
                )
                vault.store.prune_versions(
                    context_record.object_key,
                    {
                        m.server_context.object_version_id
                        for m in manifest.versions
                        if m.server_context
                    },
                )
            return manifest
