"""The databases restores and rollbacks keep beside their target, and their bounded life.

Every restore keeps the database it replaced as `<db>_pre_restore_<stamp>`, every rollback
the one it replaced as `<db>_rolled_back_<stamp>`: the way back. Left alone, a few restores
fill the server's disk, so each is kept for `RESTORE_KEEP_PREVIOUS_HOURS` from the time in its
name, then the weekly maintenance drops it, audited. The time comes from the name, not the
server's catalog, so what an operator is told at restore ("kept until ...") is what happens.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg

from pgvault_assets.engine.approvals import audit
from pgvault_assets.engine.basics.clock import Clock, utcnow
from pgvault_assets.engine.basics.names import database_beside, restore_claim
from pgvault_assets.engine.postgres.postgres import connect, connection_loss_raises, drop_database
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import PgvaultError
from pgvault_assets.settings import DatabaseUrl

log = logging.getLogger(__name__)
KEPT_LABELS = ("pre_restore", "rolled_back")
STAMP_FORMAT = "%Y%m%d%H%M%S"
_STAMP = re.compile(r"\d{14}")


class MaintenanceFailed(PgvaultError):
    """The kept databases of a target could not be looked at or dropped."""


@dataclass(frozen=True)
class KeptDatabase:
    name: str
    target: str
    label: str
    kept_at: datetime
    kept_until: datetime

    def to_dict(self) -> dict[str, str]:
        return {
            "database": self.name,
            "target": self.target,
            "kept_as": self.label,
            "kept_at": self.kept_at.isoformat(),
            "kept_until": self.kept_until.isoformat(),
        }


def kept_at(name: str) -> datetime | None:
    """The time a kept database's name carries (UTC), or None for a name of another form."""
    stamp = name[-14:]
    if not _STAMP.fullmatch(stamp):
        return None
    try:
        return datetime.strptime(stamp, STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def kept_until(name: str, keep_hours: int) -> datetime | None:
    """Until when the maintenance leaves `name` alone; None if its name carries no time."""
    at = kept_at(name)
    return None if at is None else at + timedelta(hours=keep_hours)


def kept_databases(
    maintenance: psycopg.Connection, target: str, keep_hours: int
) -> list[KeptDatabase]:
    """The databases kept beside `target`, oldest first."""
    found = []
    for label in KEPT_LABELS:
        prefix = database_beside(target, label, "0" * 14)[:-14]
        rows = maintenance.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)
        ).fetchall()
        for (name,) in rows:
            at = kept_at(name)
            if len(name) == len(prefix) + 14 and at is not None:
                found.append(
                    KeptDatabase(name, target, label, at, at + timedelta(hours=keep_hours))
                )
    return sorted(found, key=lambda kept: (kept.kept_at, kept.name))


@dataclass(frozen=True)
class KeptDatabasesResult:
    dropped: tuple[KeptDatabase, ...] = ()
    kept: tuple[KeptDatabase, ...] = ()
    skipped: tuple[str, ...] = ()
    """Targets left alone this time, with why (a restore of it running)."""


def drop_expired_kept_databases(
    vault: Vault, targets: list[DatabaseUrl], keep_hours: int, *, now: Clock = utcnow
) -> KeptDatabasesResult:
    """Drop the databases kept beside each target for longer than `keep_hours`.

    Each target is claimed as a restore claims it, so a rollback never loses the database it
    is about to swap in; a target being restored is skipped until next time. Each drop is
    recorded in the audit trail before it happens, so no drop goes unrecorded.
    """
    dropped: list[KeptDatabase] = []
    kept: list[KeptDatabase] = []
    skipped: list[str] = []
    moment = now()
    seen: set[tuple[str, str]] = set()
    for url in targets:
        server = url.with_dbname("postgres")
        if (str(server), url.dbname) in seen:
            continue
        seen.add((str(server), url.dbname))
        with (
            connection_loss_raises(
                MaintenanceFailed,
                f"the cleanup of databases kept beside {url.dbname}",
                "the ones not yet dropped are dropped next week",
            ),
            connect(server) as maintenance,
        ):
            claim = restore_claim(url.dbname)
            claimed = maintenance.execute(
                "SELECT pg_try_advisory_lock(hashtext(%s))", (claim,)
            ).fetchone()
            if not claimed or not claimed[0]:
                skipped.append(f"{url.dbname}: a restore or rollback of it is running")
                continue
            try:
                for database in kept_databases(maintenance, url.dbname, keep_hours):
                    if moment < database.kept_until:
                        kept.append(database)
                        continue
                    audit.append(
                        vault,
                        "maintenance",
                        audit.KEPT_DATABASE_DROPPED,
                        {**database.to_dict(), "keep_hours": keep_hours},
                        now=moment,
                    )
                    drop_database(maintenance, database.name)
                    log.info("dropped %s, kept until %s", database.name, database.kept_until)
                    dropped.append(database)
            finally:
                maintenance.execute("SELECT pg_advisory_unlock(hashtext(%s))", (claim,))
    return KeptDatabasesResult(tuple(dropped), tuple(kept), tuple(skipped))
