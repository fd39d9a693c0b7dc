"""Throwaway scratch databases: the lock that keeps a live run's, and dropping a dead run's."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import psycopg

from pgvault_assets.engine.postgres.postgres import (
    database_exists,
    drop_database,
)
from pgvault_assets.errors import RestoreFailed
from pgvault_assets.settings import DatabaseUrl

log = logging.getLogger(__name__)


SCRATCH_PREFIX = "pgvault_scratch_"
SCRATCH_NAME = re.compile(r"(pgvault_scratch_[a-z]{1,6}_\d{8}_[0-9a-f]{8})(_restore_\d{14})?")


@dataclass(frozen=True)
class Scratch:
    """A backup restored into a throwaway database, and the dead runs' leftovers dropped first."""

    url: DatabaseUrl
    abandoned: tuple[str, ...] = ()


def scratch_lock(name: str) -> str:
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
    for match in filter(None, (SCRATCH_NAME.fullmatch(name) for (name,) in found)):
        name, lock = match.group(0), scratch_lock(match.group(1))
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


def still_holding(holder: psycopg.Connection, name: str) -> None:
    """The scratch's lock lives exactly as long as the holder's session: a session ended
    meanwhile (a terminated backend, a dropped connection) means another run may drop it."""
    try:
        holder.execute("SELECT 1")
    except psycopg.Error:
        raise RestoreFailed(
            f"the session guarding the scratch database {name} ended during the restore, so "
            "another run may drop it; run this again"
        ) from None
