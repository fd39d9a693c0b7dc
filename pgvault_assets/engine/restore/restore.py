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
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date

import psycopg

from pgvault_assets.engine.basics.clock import Clock, utcnow
from pgvault_assets.engine.basics.interrupts import said_as
from pgvault_assets.engine.basics.names import database_beside
from pgvault_assets.engine.basics.testpoints import pause_point
from pgvault_assets.engine.postgres import server_context as sc
from pgvault_assets.engine.postgres.postgres import (
    check_tool_fits_server,
    connect,
    database_exists,
    server_version,
    table_row_counts,
)
from pgvault_assets.engine.restore.provision import (
    check_server,
    create_roles,
    create_scratch,
    drop_roles_created_for,
    like_the_source,
    refuse_other_shape,
    run_statements,
    settle_roles,
)
from pgvault_assets.engine.restore.scratch import (
    SCRATCH_NAME,
    SCRATCH_PREFIX,
    Scratch,
    scratch_lock,
    still_holding,
)
from pgvault_assets.engine.restore.swap import (
    claimed_target,
    connection_loss_keeps,
    drop_scratch,
    free_stamp,
    swap_databases,
)
from pgvault_assets.engine.restore.verify import compare_counts, feed_psql
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.engine.vault.pipeline import Progress
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import RestoreFailed
from pgvault_assets.settings import DatabaseUrl

log = logging.getLogger(__name__)


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
        connection_loss_keeps(target),
        # Repair first: a run refused below must still leave the target usable.
        claimed_target(maintenance_url, target) as (maintenance, abandoned),
    ):
        stamp = free_stamp(maintenance, target, ("restore", "pre_restore"), now())
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
        plan = check_server(maintenance, context) if context is not None else None
        created: list[str] = []
        lent: list[str] = []
        try:
            create_scratch(maintenance, scratch, context)
            if context is not None and plan is not None:
                create_roles(maintenance, plan, scratch, created, lent)
                pause_point("roles")
                run_statements(maintenance, context.database.create_statements(scratch)[1:])
                run_statements(maintenance, context.database.grant_statements(scratch))
                like_the_source(context, target_url.with_dbname(scratch))
            started = time.perf_counter()
            copied = feed_psql(vault, manifest, target_url.with_dbname(scratch), psql, progress)
            stages["restore"] = round(time.perf_counter() - started, 3)
            started = time.perf_counter()
            with connect(target_url.with_dbname(scratch)) as restored:
                # A table's own rows are what its COPY loaded: no second scan of each table.
                own = manifest.rows_exclude_children
                problems = compare_counts(
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
                run_statements(maintenance, context.database.setting_statements(scratch))
                refuse_other_shape(context, target_url.with_dbname(scratch), refuse=same_major)
            stages["check"] = round(time.perf_counter() - started, 3)
            started = time.perf_counter()
            had_target = database_exists(maintenance, target)
            settle = settle_roles(
                maintenance, context, created, lent, target if throwaway else None
            )
            swap_databases(maintenance, target, scratch, keep_as if had_target else None, settle)
            stages["swap"] = round(time.perf_counter() - started, 3)
        except BaseException:
            drop_scratch(maintenance, maintenance_url, scratch)
            drop_roles_created_for(maintenance, maintenance_url, [scratch])
            raise
    return RestoreResult(manifest, target, keep_as if had_target else None, stages, abandoned)


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
    if not SCRATCH_NAME.fullmatch(name):
        raise ValueError(f"scratch label {label!r} must be 1 to 6 lowercase letters")
    scratch = server_url.with_dbname(name)
    lock = scratch_lock(name)
    with connect(server_url.with_dbname("postgres"), keepalive=True) as holder:
        # The lock lives as long as this idle session: no server timeout may end it (connect()
        # already lifts the idle-in-transaction one; idle_session_timeout is PostgreSQL 14+).
        with contextlib.suppress(psycopg.Error):
            holder.execute("SET idle_session_timeout = 0")
        holder.execute("SELECT pg_advisory_lock(hashtext(%s))", (lock,))
        try:
            result = restore_backup(vault, day, scratch, now=now, progress=progress, throwaway=True)
            still_holding(holder, name)
            pause_point("scratch")
            yield Scratch(scratch, result.abandoned_scratch)
        finally:
            drop_scratch(holder, server_url.with_dbname("postgres"), name)
            drop_roles_created_for(holder, server_url.with_dbname("postgres"), [name])
            with contextlib.suppress(psycopg.Error):
                holder.execute("SELECT pg_advisory_unlock(hashtext(%s))", (lock,))
