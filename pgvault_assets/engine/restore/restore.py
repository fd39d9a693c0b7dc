"""Verify a backup, restore it beside its target, check it, and swap it in.

The object is read once: its SHA-256 is computed while its authenticated frames restore into
a fresh database beside the target. Only when the whole object matched its manifest, its last
frame authenticated, and the restored row counts match the manifest is it renamed into place,
the old database kept for rollback. Any failure before the swap drops the half-built database
and leaves the target exactly as it was: nothing reaches the target unverified.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from pgvault_assets.engine.approvals import audit
from pgvault_assets.engine.approvals import authorization as auth
from pgvault_assets.engine.basics.clock import Clock, utcnow
from pgvault_assets.engine.basics.interrupts import CHILD_GROUP, said_as
from pgvault_assets.engine.basics.names import database_beside, restore_claim
from pgvault_assets.engine.basics.testpoints import pause_point
from pgvault_assets.engine.pitr.recover import recover_to_time, source_user
from pgvault_assets.engine.pitr.runner import PgBackRest
from pgvault_assets.engine.postgres import server_context as sc
from pgvault_assets.engine.postgres import shape
from pgvault_assets.engine.postgres.postgres import (
    check_tool_fits_server,
    connect,
    connection_loss_raises,
    database_exists,
    drop_database,
    one_row,
    previous_databases,
    server_version,
    table_row_counts,
    terminate_connections,
    tool_env,
    tool_reason,
)
from pgvault_assets.engine.restore.parallel_load import ParallelLoad
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.engine.vault.pipeline import HashingReader, Progress, decrypt_stream
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import IntegrityError, LockBusy, PgvaultError, RestoreFailed
from pgvault_assets.settings import DatabaseUrl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyResult:
    manifest: Manifest
    sha256: str
    size_bytes: int
    decrypted: bool
    dump_size_bytes: int | None


@dataclass(frozen=True)
class RestoreResult:
    manifest: Manifest
    target: str
    previous: str | None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    abandoned_scratch: tuple[str, ...] = ()
    """Scratch databases of dead runs on the server, dropped before this restore."""

    def rollback_command(self, target_name: str) -> str | None:
        if self.previous is None:
            return None
        return f"pgvault rollback-restore --target {target_name}"


def _refuse_mismatch(manifest: Manifest, sha256: str, size: int) -> None:
    if size != manifest.size_bytes:
        raise IntegrityError(
            f"backup {manifest.date} is {size} bytes but its manifest says {manifest.size_bytes} "
            "(truncated or replaced); do not restore it, take or pick another backup"
        )
    if sha256 != manifest.sha256:
        raise IntegrityError(
            f"backup {manifest.date} failed its SHA-256 check (stored {sha256[:12]}…, manifest "
            f"{manifest.sha256[:12]}…); do not restore it, take or pick another backup"
        )


def verify_backup(
    vault: Vault, day: date, *, full: bool = True, progress: Progress | None = None
) -> VerifyResult:
    """Check the stored object against its manifest; with `full`, also decrypt it all."""
    manifest = vault.read_manifest(day)
    with contextlib.closing(
        vault.store.open_reader(manifest.object_key, manifest.object_version_id)
    ) as raw:
        reader = HashingReader(raw, progress)
        if not full:
            reader.drain()
            _refuse_mismatch(manifest, reader.hexdigest(), reader.size)
            return VerifyResult(manifest, reader.hexdigest(), reader.size, False, None)
        keys = vault.decryption_keys(manifest)
        plain = 0
        try:
            for chunk in decrypt_stream(reader, keys, manifest.encryption_context):
                plain += len(chunk)
        except IntegrityError:
            reader.drain()
            _refuse_mismatch(manifest, reader.hexdigest(), reader.size)
            raise
        reader.drain()
    _refuse_mismatch(manifest, reader.hexdigest(), reader.size)
    if plain != manifest.dump_size_bytes:
        raise IntegrityError(
            f"backup {day} decrypts to {plain} bytes, not the {manifest.dump_size_bytes} its manifest "
            "records; do not restore it"
        )
    return VerifyResult(manifest, reader.hexdigest(), reader.size, True, plain)


def _free_stamp(
    maintenance: psycopg.Connection, target: str, labels: tuple[str, ...], at: datetime
) -> str:
    """A timestamp no earlier run's databases of `target` carry: two runs in one second get
    consecutive seconds, so the newest kept database still sorts first. Called holding the
    target's lock, so no concurrent run picks the same."""
    for offset in range(3600):
        stamp = (at + timedelta(seconds=offset)).astimezone(UTC).strftime("%Y%m%d%H%M%S")
        if not any(
            database_exists(maintenance, database_beside(target, label, stamp)) for label in labels
        ):
            return stamp
    raise RestoreFailed(
        f"an hour of restores of {target} have left their databases; drop the old "
        f"{target}_pre_restore_* and {target}_rolled_back_* databases you no longer need"
    )


def _guard_target(maintenance: psycopg.Connection, target: str) -> tuple[str, ...]:
    """Claim `target` for this run and repair what an interrupted run left on it.

    The claim is a session advisory lock, so the server frees it when a killed run's
    connection drops. Holding it, any `<target>_restore_<stamp>` database is a dead run's
    half-built scratch: it is dropped. A run killed inside the swap also leaves the target
    refusing connections; that is undone. Both are logged, so the operator sees the repair.
    Scratch databases that dead row recoveries and drills left on this server go too (their
    names are returned), and then the roles the dead runs created for the databases dropped.
    """
    claimed = maintenance.execute(
        "SELECT pg_try_advisory_lock(hashtext(%s))", (restore_claim(target),)
    ).fetchone()
    if not claimed or not claimed[0]:
        raise LockBusy(
            f"another restore or rollback of {target} is running on this server; "
            "wait for it to finish and try again"
        )
    prefix = database_beside(target, "restore", "0" * 14)[:-14]
    stale = [
        name
        for (name,) in maintenance.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)
        ).fetchall()
        if re.fullmatch(r"\d{14}", name[len(prefix) :])
    ]
    for name in stale:
        drop_database(maintenance, name)
        log.warning("dropped %s, the scratch database of an interrupted restore", name)
    refused = maintenance.execute(
        "SELECT 1 FROM pg_database WHERE datname = %s AND NOT datallowconn", (target,)
    ).fetchone()
    if stale and refused:
        maintenance.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(target))
        )
        log.warning("%s accepts connections again; a restore was interrupted in its swap", target)
    abandoned = drop_abandoned_scratch(maintenance)
    # Last: a killed run's roles own its scratch database until that is dropped.
    drop_roles_created_for(maintenance, None, [*stale, *abandoned], leftovers=True)
    return abandoned


def _drop_scratch(maintenance: psycopg.Connection, url: DatabaseUrl, scratch: str) -> None:
    """Drop a failed run's scratch database, over a new connection if the old one died with it."""
    with contextlib.suppress(psycopg.Error, PgvaultError):
        drop_database(maintenance, scratch)
        return
    with contextlib.suppress(psycopg.Error, PgvaultError), connect(url) as fresh:
        drop_database(fresh, scratch)


def _connection_loss_keeps(target: str) -> contextlib.AbstractContextManager[None]:
    return connection_loss_raises(RestoreFailed, "the restore", f"{target} was left as it was")


def _feed_psql(
    vault: Vault, manifest: Manifest, url: DatabaseUrl, psql: str, progress: Progress | None
) -> dict[str, int]:
    """Verify and restore in one read of the object: SHA-256 over the ciphertext while only
    authenticated frames, gunzipped, reach the psql sessions loading the side database.

    The caller swaps only after this returns, that is after the whole object's SHA-256 and
    size matched the manifest and the final frame authenticated; anything else raises and the
    side database is dropped. The statements after the data run only once all of it proved
    intact; any session stopping on an error ends the download at once. Returns the rows each
    table's COPY loaded, as the server counted them; the side database is analyzed.
    """
    load = vault.restore_load
    sink = ParallelLoad(psql, url, load.loaders, load.read_ahead_bytes)
    try:
        with contextlib.closing(
            vault.store.open_reader(manifest.object_key, manifest.object_version_id)
        ) as raw:
            reader = HashingReader(raw, progress)
            keys = vault.decryption_keys(manifest)
            plain = 0
            plaintext = decrypt_stream(reader, keys, manifest.encryption_context)
            try:
                with contextlib.closing(plaintext):
                    for chunk in plaintext:
                        sink.write(chunk)
                        plain += len(chunk)
            except IntegrityError:
                sink.abort()
                if reader.failure is not None:
                    raise reader.failure from None
                # A replaced or truncated object is named as such, as verify-backup names it.
                reader.drain()
                _refuse_mismatch(manifest, reader.hexdigest(), reader.size)
                raise
            reader.drain()
        _refuse_mismatch(manifest, reader.hexdigest(), reader.size)
        if plain != manifest.dump_size_bytes:
            raise IntegrityError(
                f"backup {manifest.date} decrypts to {plain} bytes, not the "
                f"{manifest.dump_size_bytes} its manifest records; do not restore it"
            )
        sink.finish()
    except BaseException:
        sink.abort()
        raise
    return sink.copied_rows


def _compare_counts(expected: dict[str, int], actual: dict[str, int]) -> list[str]:
    problems = []
    for table in sorted(set(expected) | set(actual)):
        if expected.get(table) != actual.get(table):
            problems.append(
                f"{table}: backup {expected.get(table, 'missing')}, restored {actual.get(table, 'missing')}"
            )
    return problems


def swap_databases(
    maintenance: psycopg.Connection,
    target: str,
    replacement: str,
    keep_as: str | None,
    also: Sequence[sql.Composable] = (),
) -> None:
    """Put `replacement` in `target`'s place in one transaction; keep the old one as `keep_as`.

    New connections to the target are refused while its sessions are ended, so a client that
    reconnects at the wrong moment cannot block the rename; on failure they are allowed again.
    `also` runs in the renames' transaction: what must happen exactly when the swap does.
    """
    exists = database_exists(maintenance, target)
    ident = sql.Identifier
    if exists:
        maintenance.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(ident(target))
        )
    try:
        for _ in range(50):
            if exists:
                terminate_connections(maintenance, target)
            try:
                with maintenance.transaction():
                    if exists:
                        maintenance.execute(
                            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                                ident(target), ident(keep_as)
                            )
                        )
                    pause_point("swap")
                    maintenance.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            ident(replacement), ident(target)
                        )
                    )
                    for statement in also:
                        maintenance.execute(statement)
                break
            except psycopg.errors.ObjectInUse:
                time.sleep(0.1)
        else:
            raise RestoreFailed(f"clients kept reconnecting to {target}; stop them and retry")
    except BaseException:
        if exists:
            with contextlib.suppress(psycopg.Error):
                maintenance.execute(
                    sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(target))
                )
        raise


def restore_backup(
    vault: Vault,
    day: date,
    target_url: DatabaseUrl,
    *,
    full_verify: bool = False,
    now: Clock = utcnow,
    progress: Progress | None = None,
    throwaway: bool = False,
    version: str | None = None,
) -> RestoreResult:
    """Restore the backup of `day` (with `version`, that stored version of it) into
    `target_url`'s database by a checked swap.

    The object is read once: verified (SHA-256, every frame authenticated) while it restores
    beside the target, and swapped in only once all of it proved intact, so every restore
    verifies fully; `full_verify` is accepted for callers that ask for it explicitly.

    With the backup's server context, the server needs nothing beforehand: what it lacks is
    checked (major version, extensions, locale, the restoring role's privileges) before any
    byte of the dump reaches it, missing roles are created, and the database gets the
    source's properties. Roles created for a restore that fails are dropped again; for a
    `throwaway` target (a row recovery's or drill's scratch), they stay marked with its name
    and go when it does (`drop_roles_created_for`).
    """
    stages: dict[str, float] = {}
    target = target_url.dbname
    maintenance_url = target_url.with_dbname("postgres")
    with (
        said_as(
            f"restore of {day.isoformat()} into {target} interrupted: the half-built "
            f"database was dropped; {target} is as it was"
        ),
        _connection_loss_keeps(target),
        connect(maintenance_url) as maintenance,
    ):
        # Repair first: a run refused below must still leave the target usable.
        abandoned = _guard_target(maintenance, target)
        stamp = _free_stamp(maintenance, target, ("restore", "pre_restore"), now())
        scratch = database_beside(target, "restore", stamp)
        keep_as = database_beside(target, "pre_restore", stamp)
        manifest = vault.read_manifest(day, version)
        context = sc.read_context(vault, manifest)
        major, _ = server_version(maintenance)
        if manifest.server_major is not None:
            note = sc.major_version_note(manifest.server_major, major)
            if note is not None:
                log.warning("%s", note)
        # A newer major grants and prints some things differently (PostgreSQL 17's MAINTAIN):
        # there, the restored copy's differences from the record are said, not refused.
        same_major = manifest.server_major in (None, major)
        psql, _ = check_tool_fits_server("psql", major)
        plan = _check_server(maintenance, context) if context is not None else None
        created: list[str] = []
        lent: list[str] = []
        try:
            _create_scratch(maintenance, scratch, context)
            if context is not None and plan is not None:
                _create_roles(maintenance, plan, scratch, created, lent)
                pause_point("roles")
                _run(maintenance, context.database.create_statements(scratch)[1:])
                _run(maintenance, context.database.grant_statements(scratch))
                _like_the_source(context, target_url.with_dbname(scratch))
            started = time.perf_counter()
            copied = _feed_psql(vault, manifest, target_url.with_dbname(scratch), psql, progress)
            stages["restore"] = round(time.perf_counter() - started, 3)
            started = time.perf_counter()
            with connect(target_url.with_dbname(scratch)) as restored:
                # A table's own rows are what its COPY loaded: no second scan of each table.
                own = manifest.rows_exclude_children
                problems = _compare_counts(
                    manifest.table_rows,
                    table_row_counts(restored, own_rows=own, known=copied if own else {}),
                )
            if problems:
                raise RestoreFailed(
                    "restored row counts differ from the backup's manifest: "
                    + "; ".join(problems[:5])
                )
            if context is not None:
                # Only now: a statement_timeout or read-only default must not cut the load short.
                _run(maintenance, context.database.setting_statements(scratch))
                _refuse_other_shape(context, target_url.with_dbname(scratch), refuse=same_major)
            stages["check"] = round(time.perf_counter() - started, 3)
            started = time.perf_counter()
            had_target = database_exists(maintenance, target)
            settle = _settle_roles(
                maintenance, context, created, lent, target if throwaway else None
            )
            swap_databases(maintenance, target, scratch, keep_as if had_target else None, settle)
            stages["swap"] = round(time.perf_counter() - started, 3)
        except BaseException:
            _drop_scratch(maintenance, maintenance_url, scratch)
            drop_roles_created_for(maintenance, maintenance_url, [scratch])
            raise
    return RestoreResult(manifest, target, keep_as if had_target else None, stages, abandoned)


# A restored copy must have these as the backup recorded them before it is swapped in.
# Roles that existed already may differ (never altered, reported by the role plan), and an
# extension may come at the new server's version (said by the extension check).
_SECTIONS_THAT_MUST_MATCH = tuple(
    section for section in shape.SECTIONS if section not in (shape.ROLES, shape.EXTENSIONS)
)


def _refuse_other_shape(
    context: sc.ServerContext, restored_url: DatabaseUrl, *, refuse: bool = True
) -> None:
    """Compare the restored copy's owners, grants, policies, large objects, comments,
    properties and settings with the backup's record of them; refuse it if they differ,
    or only say so (`refuse` off)."""
    with connect(restored_url) as restored:
        found = shape.differences(
            shape.recorded_shape(context), shape.read_shape(restored), _SECTIONS_THAT_MUST_MATCH
        )
    if not found:
        return
    what = "; and in its ".join(f"{d.section}: {d.describe('backup', 'restored')}" for d in found)
    if refuse:
        raise RestoreFailed(f"the restored database differs from the backup in its {what}")
    log.warning(
        "on this newer major, the restored database differs from the backup in its %s", what
    )


def _like_the_source(context: sc.ServerContext, scratch_url: DatabaseUrl) -> None:
    """Make the new database's defaults the source's before the dump: a dump never drops the
    `public` schema that every new database has, so a source without one gets none here."""
    owners = context.objects.get(shape.OWNERS)
    if owners is None or any(line.startswith("schema public owned by ") for line in owners):
        return
    with connect(scratch_url) as scratch:
        scratch.execute("DROP SCHEMA IF EXISTS public")


@dataclass(frozen=True)
class CopyResult:
    """A database copied from another server into `target` by the checked swap."""

    target: str
    previous: str | None
    table_rows: dict[str, int]
    stage_seconds: dict[str, float] = field(default_factory=dict)


def _copy_with_pg_dump(source: DatabaseUrl, scratch: DatabaseUrl, major: int) -> None:
    """pg_dump of `source` piped into psql on `scratch`; the first error stops both."""
    pg_dump, _ = check_tool_fits_server("pg_dump", major)
    psql, _ = check_tool_fits_server("psql", major)
    dump = subprocess.Popen(
        [pg_dump, "--no-password", "--no-owner", "--no-privileges", "--format=plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=tool_env(source),
        **CHILD_GROUP,
    )
    try:
        load = subprocess.run(
            [psql, "--no-password", "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1"],
            stdin=dump.stdout,
            capture_output=True,
            env=tool_env(scratch),
            check=False,
            **CHILD_GROUP,
        )
    except BaseException:  # interrupted: run() ended psql, and pg_dump ends here
        dump.kill()
        dump.wait()
        raise
    if dump.stdout is not None:
        dump.stdout.close()
    if load.returncode != 0 and dump.poll() is None:
        dump.kill()
    dump_errors = dump.stderr.read().decode(errors="replace") if dump.stderr else ""
    code = dump.wait()
    if code != 0:
        raise RestoreFailed(
            f"pg_dump of the recovered database failed ({tool_reason(dump_errors.splitlines(), 'no message')})"
        )
    if load.returncode != 0:
        reason = tool_reason(load.stderr.decode(errors="replace").splitlines(), "no message")
        raise RestoreFailed(f"psql failed while loading the recovered database ({reason})")


def copy_database(
    source: DatabaseUrl, target_url: DatabaseUrl, *, now: Clock = utcnow
) -> CopyResult:
    """Copy `source` (a recovered cluster's database) into `target_url` by the checked swap.

    The copy goes into a scratch database beside the target; only when its row counts equal
    the source's is it renamed into place, the old target kept for rollback, exactly as a
    restore from a dump. Objects are owned by the restoring role (the copy carries no owners
    or grants: the recovered cluster's roles need not exist on the target's server).
    """
    stages: dict[str, float] = {}
    target = target_url.dbname
    maintenance_url = target_url.with_dbname("postgres")
    with (
        _connection_loss_keeps(target),
        connect(maintenance_url) as maintenance,
        connect(source) as origin,
    ):
        _guard_target(maintenance, target)
        stamp = _free_stamp(maintenance, target, ("restore", "pre_restore"), now())
        scratch = database_beside(target, "restore", stamp)
        keep_as = database_beside(target, "pre_restore", stamp)
        major, _ = server_version(maintenance)
        expected = table_row_counts(origin)
        try:
            _create_scratch(maintenance, scratch, None)
            started = time.perf_counter()
            _copy_with_pg_dump(source, target_url.with_dbname(scratch), major)
            stages["restore"] = round(time.perf_counter() - started, 3)
            with connect(target_url.with_dbname(scratch)) as restored:
                restored.execute("ANALYZE")
                problems = _compare_counts(expected, table_row_counts(restored))
            if problems:
                raise RestoreFailed(
                    "copied row counts differ from the recovered database: "
                    + "; ".join(problems[:5])
                )
            started = time.perf_counter()
            had_target = database_exists(maintenance, target)
            swap_databases(maintenance, target, scratch, keep_as if had_target else None)
            stages["swap"] = round(time.perf_counter() - started, 3)
        except BaseException:
            _drop_scratch(maintenance, maintenance_url, scratch)
            raise
    return CopyResult(target, keep_as if had_target else None, expected, stages)


def _check_server(maintenance: psycopg.Connection, context: sc.ServerContext) -> sc.RolePlan:
    """Everything the server must offer the backup, checked before anything is created."""
    for note in sc.refuse_missing_extensions(maintenance, context):
        log.warning("%s", note)
    plan = sc.plan_roles(maintenance, context)
    owners = {context.database.owner} | {
        line.rsplit(" owned by ", 1)[1] for line in context.objects.get(shape.OWNERS, ())
    }
    sc.refuse_missing_privileges(maintenance, plan, owners)
    for warning in plan.warnings:
        log.warning("%s", warning)
    return plan


def _run(maintenance: psycopg.Connection, statements: list[str]) -> None:
    for statement in statements:
        maintenance.execute(statement)


# How a server refuses a database's locale: an OS locale or ICU it lacks.
_LOCALE_REFUSAL = re.compile(r"locale|collation|ICU", re.I)


def _create_scratch(
    maintenance: psycopg.Connection, scratch: str, context: sc.ServerContext | None
) -> None:
    """The empty database the dump goes into, with the source's encoding and locale: a
    locale this server lacks is refused here, before any role is created."""
    if context is None:
        maintenance.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(scratch))
        )
        return
    db = context.database
    try:
        maintenance.execute(db.create_statements(scratch)[0])
    except psycopg.Error as exc:
        if exc.sqlstate is None or not _LOCALE_REFUSAL.search(str(exc)):
            raise
        locale = db.icu_locale if db.locale_provider == "icu" else db.collate
        raise RestoreFailed(
            f"this server cannot create a database with the backup's locale {locale!r} "
            f"({' '.join(str(exc).split())}); generate that locale on the server's machine "
            "(e.g. locale-gen, then restart PostgreSQL) and run the restore again; nothing "
            "was changed"
        ) from None


# A role a restore creates carries this comment, naming the restore's scratch database, until
# the restored copy is about to be swapped in: a run killed meanwhile leaves a role the next
# restore on this server recognises as a leftover once that scratch database is gone.
_CREATED_FOR = "pgvault: created for the restore into "


def _create_roles(
    maintenance: psycopg.Connection,
    plan: sc.RolePlan,
    scratch: str,
    created: list[str],
    lent: list[str],
) -> None:
    """Create the missing roles, noting each in `created` at once, so a failure drops them.

    A restoring role that is not a superuser must be a member of a role to hand it
    ownership (ALTER ... OWNER TO); it is made a member of each role it creates until the
    restored copy is complete (`lent`), and no longer.
    """
    (superuser,) = one_row(
        maintenance, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    )
    for role in plan.missing:
        statements = role.statements()
        with maintenance.transaction():
            maintenance.execute(statements[0])
            maintenance.execute(
                sql.SQL("COMMENT ON ROLE {} IS {}").format(
                    sql.Identifier(role.name), sql.Literal(_CREATED_FOR + scratch)
                )
            )
            _run(maintenance, statements[1:])
        created.append(role.name)
        log.info("created role %s, which the backup needs", role.name)
        if not superuser and not role.superuser:
            maintenance.execute(
                sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(role.name))
            )
            lent.append(role.name)
    _run(maintenance, [membership.statement() for membership in plan.memberships])


def _settle_roles(
    maintenance: psycopg.Connection,
    context: sc.ServerContext | None,
    created: list[str],
    lent: list[str],
    throwaway: str | None,
) -> list[sql.Composable]:
    """What the swap's transaction does to the roles, so that it happens exactly then.

    The roles the backup needs are the server's from then on: no longer marked as a run's
    leftovers (those of another, interrupted run included), or, for a throwaway target,
    marked with its name so they go with it. The restoring role leaves the roles it joined.
    """
    if context is None:
        return []
    names = [role.name for role in context.roles]
    marked = {
        name
        for (name,) in maintenance.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) "
            "AND starts_with(shobj_description(oid, 'pg_authid'), %s)",
            (names, _CREATED_FOR),
        ).fetchall()
    }
    statements: list[sql.Composable] = []
    for name in names:
        if throwaway is not None and name in created:
            mark: sql.Composable = sql.Literal(_CREATED_FOR + throwaway)
        elif name in marked:
            mark = sql.SQL("NULL")
        else:
            continue
        statements.append(sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(name), mark))
    statements += [
        sql.SQL("REVOKE {} FROM CURRENT_USER").format(sql.Identifier(name)) for name in lent
    ]
    return statements


def drop_roles_created_for(
    maintenance: psycopg.Connection,
    url: DatabaseUrl | None,
    databases: Iterable[str],
    *,
    leftovers: bool = False,
) -> tuple[str, ...]:
    """Drop the roles a restore created for any of `databases`, which are gone (a failed or
    killed restore's scratch, a throwaway target); return their names.

    Only roles still marked for one of those databases: a role a later restore used (and so
    unmarked) stays. One that has come to own something cannot be dropped: it stays, and is
    said. Over a new connection if the given one died with the restore.
    """
    databases = list(databases)
    if not databases:
        return ()
    try:
        return _drop_marked(maintenance, databases, leftovers)
    except psycopg.Error:
        if url is None:
            raise
        with contextlib.suppress(psycopg.Error, PgvaultError), connect(url) as fresh:
            return _drop_marked(fresh, databases, leftovers)
    return ()


def _drop_marked(
    maintenance: psycopg.Connection, databases: list[str], leftovers: bool
) -> tuple[str, ...]:
    dropped = []
    for name, comment in maintenance.execute(
        "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
        "WHERE shobj_description(oid, 'pg_authid') = ANY(%s) ORDER BY 1",
        ([_CREATED_FOR + database for database in databases],),
    ).fetchall():
        database = comment[len(_CREATED_FOR) :]
        try:
            maintenance.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
        except psycopg.errors.DependentObjectsStillExist as exc:
            log.warning(
                "role %s was created by a restore into %s, which is gone, but cannot be dropped "
                "(%s); drop it by hand if nothing needs it",
                name,
                database,
                " ".join(str(exc).split()),
            )
            continue
        dropped.append(name)
        if leftovers:
            log.warning(
                "dropped role %s, created by an interrupted restore into %s", name, database
            )
        else:
            log.info("dropped role %s, created for %s", name, database)
    return tuple(dropped)


def rollback_restore(url: DatabaseUrl, *, now: Clock = utcnow) -> tuple[str, str]:
    """Swap the newest kept database back in; the restored one is kept in turn."""
    kept = previous_databases(url)
    if not kept:
        raise RestoreFailed(
            f"there is no earlier database kept for {url.dbname}; nothing to roll back"
        )
    target = url.dbname
    with (
        _connection_loss_keeps(target),
        connect(url.with_dbname("postgres")) as maintenance,
    ):
        _guard_target(maintenance, target)
        keep_as = database_beside(
            target, "rolled_back", _free_stamp(maintenance, target, ("rolled_back",), now())
        )
        maintenance.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(kept[0]))
        )
        swap_databases(maintenance, target, kept[0], keep_as)
    return kept[0], keep_as


SCRATCH_PREFIX = "pgvault_scratch_"
_SCRATCH = re.compile(r"(pgvault_scratch_[a-z]{1,6}_\d{8}_[0-9a-f]{8})(_restore_\d{14})?")


@dataclass(frozen=True)
class Scratch:
    """A backup restored into a throwaway database, and the dead runs' leftovers dropped first."""

    url: DatabaseUrl
    abandoned: tuple[str, ...] = ()


def _scratch_lock(name: str) -> str:
    return f"pgvault-scratch:{name}"


def drop_abandoned_scratch(maintenance: psycopg.Connection) -> tuple[str, ...]:
    """Drop the scratch databases whose creating run is dead; return their names.

    A run holds a session advisory lock named after its scratch database from before creating
    it until after dropping it, so the server frees the lock exactly when the run dies. Only
    names of the exact scratch form are considered (`pgvault_scratch_<label>_<date>_<token>`,
    and the restore's own `..._restore_<stamp>` beside it); one whose lock is taken belongs to
    a live run and is left alone.
    """
    found = maintenance.execute(
        "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY datname",
        (SCRATCH_PREFIX,),
    ).fetchall()
    dropped: list[str] = []
    for match in filter(None, (_SCRATCH.fullmatch(name) for (name,) in found)):
        name, lock = match.group(0), _scratch_lock(match.group(1))
        free = maintenance.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (lock,)).fetchone()
        if not free or not free[0]:
            continue
        try:
            if database_exists(maintenance, name):
                drop_database(maintenance, name)
                dropped.append(name)
                log.warning("dropped %s, the scratch database of an interrupted run", name)
        except psycopg.Error as exc:
            # Someone else's leftover (another role's drill, say) must not block every restore.
            log.warning(
                "could not drop %s, the scratch database of an interrupted run (%s); "
                "drop it as its owner",
                name,
                " ".join(str(exc).split()),
            )
        finally:
            maintenance.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock,))
    return tuple(dropped)


def _still_holding(holder: psycopg.Connection, name: str) -> None:
    """The scratch's lock lives exactly as long as the holder's session: a session ended
    meanwhile (a terminated backend, a dropped connection) means another run may drop it."""
    try:
        holder.execute("SELECT 1")
    except psycopg.Error:
        raise RestoreFailed(
            f"the session guarding the scratch database {name} ended during the restore, so "
            "another run may drop it; run this again"
        ) from None


@contextlib.contextmanager
def restore_into_scratch(
    vault: Vault,
    day: date,
    server_url: DatabaseUrl,
    *,
    label: str,
    now: Clock = utcnow,
    progress: Progress | None = None,
) -> Iterator[Scratch]:
    """Restore `day` into a throwaway database on `server_url`'s server; always drop it.

    Row recovery and drills read a backup as a database without touching any real one: a
    name that exists nowhere makes `restore_backup`'s swap a plain rename, with every check.
    The scratch's lock is held on a connection of its own for the database's whole life, so a
    concurrent run's `drop_abandoned_scratch` leaves it alone and, once this process is
    killed, the next run drops it.
    """
    name = f"{SCRATCH_PREFIX}{label}_{day.strftime('%Y%m%d')}_{uuid.uuid4().hex[:8]}"
    if not _SCRATCH.fullmatch(name):
        raise ValueError(f"scratch label {label!r} must be 1 to 6 lowercase letters")
    scratch = server_url.with_dbname(name)
    lock = _scratch_lock(name)
    with connect(server_url.with_dbname("postgres"), keepalive=True) as holder:
        # The lock lives as long as this idle session: no server timeout may end it (connect()
        # already lifts the idle-in-transaction one; idle_session_timeout is PostgreSQL 14+).
        with contextlib.suppress(psycopg.Error):
            holder.execute("SET idle_session_timeout = 0")
        holder.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock,))
        try:
            result = restore_backup(vault, day, scratch, now=now, progress=progress, throwaway=True)
            _still_holding(holder, name)
            pause_point("scratch")
            yield Scratch(scratch, result.abandoned_scratch)
        finally:
            _drop_scratch(holder, server_url.with_dbname("postgres"), name)
            drop_roles_created_for(holder, server_url.with_dbname("postgres"), [name])
            with contextlib.suppress(psycopg.Error):
                holder.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock,))


# The operators' entry points: staging's restores are audited, production's are authorized
# by two approvals first. Authorization decides and audit records; only this module restores.


def restore_staging(
    vault: Vault,
    day: date,
    url: DatabaseUrl,
    *,
    actor: str,
    full_verify: bool = False,
    progress: Progress | None = None,
    now: Clock = utcnow,
    version: str | None = None,
) -> RestoreResult:
    """Restore staging and record it, failed or not: production is checked against what it holds."""
    body = {"date": day.isoformat(), "sha256": None, "database": url.dbname}
    with audit.staging_operation(
        vault, audit.STAGING_RESTORE, body, actor=actor, now=now
    ) as learned:
        learned["sha256"] = vault.read_manifest(day, version).sha256
        result = restore_backup(
            vault, day, url, full_verify=full_verify, progress=progress, now=now, version=version
        )
        learned["sha256"] = result.manifest.sha256  # what was restored, even if re-run meanwhile
        return result


@dataclass(frozen=True)
class TimeRestoreResult:
    copy: CopyResult
    target_time: datetime
    base_backup: str
    stopped_at: str
    replay_seconds: float


def restore_staging_to_time(
    vault: Vault,
    tool: PgBackRest,
    target_time: datetime,
    url: DatabaseUrl,
    *,
    source: DatabaseUrl,
    actor: str,
    source_major: int | None = None,
    cluster_root: Path | None = None,
    now: Clock = utcnow,
) -> TimeRestoreResult:
    """Recover a throwaway cluster to `target_time`, then copy `source`'s database from it
    into staging by the checked swap, and record it, failed or not."""
    body = {"time": time_key(target_time), "database": url.dbname}
    with (
        said_as(
            f"restore of {url.dbname} to {time_key(target_time)} interrupted: the throwaway "
            f"cluster and the half-built database were removed; {url.dbname} is as it was"
        ),
        audit.staging_operation(
            vault, audit.STAGING_RESTORE_TO_TIME, body, actor=actor, now=now
        ) as learned,
    ):
        with recover_to_time(
            tool,
            target_time,
            superuser=source_user(source),
            source_major=source_major,
            root=cluster_root,
        ) as recovered:
            learned.update(base_backup=recovered.backup_label, stopped_at=recovered.stopped_at)
            copied = copy_database(recovered.database(source.dbname), url, now=now)
        learned["previous"] = copied.previous
        return TimeRestoreResult(
            copied,
            target_time,
            recovered.backup_label,
            recovered.stopped_at,
            recovered.replay_seconds,
        )


def time_key(target_time: datetime) -> str:
    """How a recovery's time is written in the audit trail and in a request: UTC ISO 8601."""
    return target_time.astimezone(UTC).isoformat()


def restore_production_to_time(
    vault: Vault,
    tool: PgBackRest,
    request_id: str,
    target_time: datetime,
    target_url: DatabaseUrl,
    approvers_file: Path,
    *,
    source: DatabaseUrl,
    cluster_root: Path | None = None,
    now: Clock = utcnow,
    confirm: Callable[[str], None] | None = None,
) -> TimeRestoreResult:
    """Recover production to the time a dual-authorized `restore-to-time` request names, from
    the base backup it pins, once staging holds that same recovery; with the safe swap."""
    pinned = auth.authorize_pinned_time(
        vault, request_id, approvers_file, database=target_url.dbname, now=now
    )
    if pinned.time != time_key(target_time):
        raise auth.AuthorizationRefused(
            f"request {request_id} approved recovering to {pinned.time}, not "
            f"{time_key(target_time)}; nothing was restored"
        )
    if confirm is not None:
        confirm(target_url.dbname)

    def recover() -> TimeRestoreResult:
        with recover_to_time(
            tool,
            target_time,
            superuser=source_user(source),
            root=cluster_root,
            base_backup=pinned.base_backup,
        ) as recovered:
            copied = copy_database(recovered.database(source.dbname), target_url, now=now)
        return TimeRestoreResult(
            copied,
            target_time,
            recovered.backup_label,
            recovered.stopped_at,
            recovered.replay_seconds,
        )

    return auth.run_authorized(
        vault,
        pinned.authorization,
        recover,
        lambda result: (
            f"recovered to {pinned.time} from {result.base_backup}; previous kept as "
            f"{result.copy.previous}"
        ),
        now=now,
    )


def rollback_staging(
    vault: Vault, url: DatabaseUrl, *, actor: str, now: Clock = utcnow
) -> tuple[str, str]:
    """Swap staging's kept database back in and record it: staging no longer holds the backup."""
    with audit.staging_operation(
        vault, audit.STAGING_ROLLBACK, {"database": url.dbname}, actor=actor, now=now
    ) as learned:
        swapped_in, kept_as = rollback_restore(url, now=now)
        learned.update(swapped_in=swapped_in, kept_as=kept_as)
    return swapped_in, kept_as


def restore_production(
    vault: Vault,
    request_id: str,
    target_url: DatabaseUrl,
    approvers_file: Path,
    *,
    now: Clock = utcnow,
    full_verify: bool = False,
    progress: Progress | None = None,
    confirm: Callable[[str], None] | None = None,
) -> RestoreResult:
    """Restore production under a dual-authorized `restore` request, with the safe swap.

    `confirm` runs after every check and before the request is consumed, so declining the
    confirmation leaves the request usable.
    """
    pinned = auth.authorize_pinned_backup(
        vault,
        request_id,
        approvers_file,
        kind="restore",
        database=target_url.dbname,
        undone="nothing was restored",
        now=now,
    )
    if confirm is not None:
        confirm(target_url.dbname)
    return auth.run_authorized(
        vault,
        pinned.authorization,
        lambda: restore_backup(
            vault, pinned.day, target_url, full_verify=full_verify, now=now, progress=progress
        ),
        lambda result: f"restored {result.manifest.date}; previous kept as {result.previous}",
        now=now,
    )


def rollback_production(
    vault: Vault,
    request_id: str,
    url: DatabaseUrl,
    approvers_file: Path,
    *,
    now: Clock = utcnow,
    confirm: Callable[[str], None] | None = None,
) -> tuple[str, str]:
    """Swap production's kept database back in under a dual-authorized `rollback` request."""
    authorization = auth.authorize(
        vault, request_id, approvers_file, kind="rollback", database=url.dbname, now=now
    )
    swap_in = authorization.request.scope.get("swap_in")
    kept = previous_databases(url)
    if not kept or kept[0] != swap_in:
        raise auth.AuthorizationRefused(
            f"request {request_id} approved swapping in {swap_in}, but the newest kept database is "
            f"{kept[0] if kept else 'none'}; create a new rollback request"
        )
    if confirm is not None:
        confirm(url.dbname)
    return auth.run_authorized(
        vault,
        authorization,
        lambda: rollback_restore(url, now=now),
        lambda swapped: f"{url.dbname} is back to {swapped[0]}; replaced one kept as {swapped[1]}",
        now=now,
    )
