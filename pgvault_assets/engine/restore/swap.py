"""Claim a target, repair what a dead run left on it, and swap a checked copy into its place."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from pgvault_assets.engine.basics.clock import Clock, utcnow
from pgvault_assets.engine.basics.names import database_beside, restore_claim
from pgvault_assets.engine.basics.testpoints import pause_point
from pgvault_assets.engine.postgres.postgres import (
    connect,
    connection_loss_raises,
    database_exists,
    drop_database,
    previous_databases,
    terminate_connections,
)
from pgvault_assets.engine.restore.provision import drop_roles_created_for
from pgvault_assets.engine.restore.scratch import drop_abandoned_scratch
from pgvault_assets.errors import LockBusy, PgvaultError, RestoreFailed
from pgvault_assets.settings import DatabaseUrl

log = logging.getLogger(__name__)


def free_stamp(
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


@contextlib.contextmanager
def claimed_target(
    url: DatabaseUrl, target: str
) -> Iterator[tuple[psycopg.Connection, tuple[str, ...]]]:
    """A maintenance connection to `url`'s server holding `target`'s claim (`guard_target`),
    and what the repair dropped. The claim is given back before the connection closes: a
    backend frees its locks only once it has exited, after the client has moved on, so a run
    that follows at once would otherwise find its target still claimed."""
    with connect(url) as maintenance:
        abandoned = guard_target(maintenance, target)
        try:
            yield maintenance, abandoned
        finally:
            with contextlib.suppress(psycopg.Error):  # a lost connection frees it anyway
                maintenance.execute(
                    "SELECT pg_advisory_unlock(hashtext(%s))", (restore_claim(target),)
                )


def guard_target(maintenance: psycopg.Connection, target: str) -> tuple[str, ...]:
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


def drop_scratch(maintenance: psycopg.Connection, url: DatabaseUrl, scratch: str) -> None:
    """Drop a failed run's scratch database, over a new connection if the old one died with it."""
    with contextlib.suppress(psycopg.Error, PgvaultError):
        drop_database(maintenance, scratch)
        return
    with contextlib.suppress(psycopg.Error, PgvaultError), connect(url) as fresh:
        drop_database(fresh, scratch)


def connection_loss_keeps(target: str) -> contextlib.AbstractContextManager[None]:
    return connection_loss_raises(RestoreFailed, "the restore", f"{target} was left as it was")


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


def rollback_restore(url: DatabaseUrl, *, now: Clock = utcnow) -> tuple[str, str]:
    """Swap the newest kept database back in; the restored one is kept in turn."""
    kept = previous_databases(url)
    if not kept:
        raise RestoreFailed(
            f"there is no earlier database kept for {url.dbname}; nothing to roll back"
        )
    target = url.dbname
    with (
        connection_loss_keeps(target),
        claimed_target(url.with_dbname("postgres"), target) as (maintenance, _),
    ):
        keep_as = database_beside(
            target, "rolled_back", free_stamp(maintenance, target, ("rolled_back",), now())
        )
        maintenance.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(kept[0]))
        )
        swap_databases(maintenance, target, kept[0], keep_as)
    return kept[0], keep_as
