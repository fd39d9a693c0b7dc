"""The audit trail: append-only JSON records under `{environment}/audit/` in the store.

Every record is written create-only (a key that already exists is never replaced), so the
trail can grow but pgvault never rewrites its history; in a bucket with S3 Object Lock each
record is also locked in compliance mode, so not even the bucket's owner can delete it early. A key that is unique per *thing*
rather than per write turns the same primitive into a once-only claim: the execution record
of a request lives at `executions/{request_id}.json`, so a second execution cannot be written.

Production operations are recorded by the two-person rule (request, approvals, execution,
outcome); staging's restores, rollbacks and row recoveries by `staging_operation` below, each
with who ran it and how it ended, failures included. This module records; it never restores.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from pgvault_assets.engine.basics.clock import Clock, utcnow
from pgvault_assets.engine.storage.immutability import AUDIT_LOCK_MODE, audit_retain_until
from pgvault_assets.engine.storage.store import Store
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import PgvaultError, StoreError
from pgvault_assets.redact import redact

STAGING_RESTORE = "staging-restore"
STAGING_ROLLBACK = "staging-rollback"
STAGING_RESTORE_TO_TIME = "staging-restore-to-time"
ROW_RECOVERY = "row-recovery"
INTEGRITY_CHECK = "integrity-check"
KEPT_DATABASE_DROPPED = "kept-database-dropped"
log = logging.getLogger(__name__)


class RecordExists(StoreError):
    """A create-only write found its key taken; the existing record was left as it was."""


def put_new(store: Store, key: str, data: bytes, *, retain_until: datetime | None = None) -> None:
    """Write `key` only if it does not exist yet; raise `RecordExists` if it does.

    `retain_until`: in a bucket with Object Lock, the record cannot be deleted before then.
    """
    if not store.put_new(key, data, retain_until=retain_until, lock_mode=AUDIT_LOCK_MODE):
        raise RecordExists(f"{key} already exists in the audit trail")


@dataclass(frozen=True)
class AuditRecord:
    key: str
    record: str
    recorded_at: datetime
    body: dict[str, Any]


def audit_prefix(environment: str) -> str:
    return f"{environment}/audit/"


def unique_name(now: datetime) -> str:
    """Sorts by time; the random part keeps two writers in the same microsecond apart."""
    return f"{now.astimezone(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex[:8]}"


def append(
    vault: Vault,
    folder: str,
    record: str,
    body: dict[str, Any],
    *,
    now: datetime,
    name: str | None = None,
) -> AuditRecord:
    """Add one record; `name` (for once-only claims) defaults to a unique time-ordered name."""
    key = f"{audit_prefix(vault.environment)}{folder}/{name or unique_name(now)}.json"
    payload = {"record": record, "recorded_at": now.astimezone(UTC).isoformat(), **body}
    put_new(
        vault.store,
        key,
        json.dumps(payload, indent=2, sort_keys=True).encode(),
        retain_until=audit_retain_until(vault.retention, now=now),
    )
    return AuditRecord(key, record, now.astimezone(UTC), payload)


def read_record(vault: Vault, key: str) -> AuditRecord | None:
    raw = vault.store.get_bytes(key)
    if raw is None:
        return None
    try:
        body = json.loads(raw)
        return AuditRecord(
            key, str(body["record"]), datetime.fromisoformat(body["recorded_at"]), body
        )
    except (ValueError, KeyError, TypeError):
        return AuditRecord(key, "unreadable", datetime.min.replace(tzinfo=UTC), {})


def audit_records(vault: Vault, folder: str = "") -> list[AuditRecord]:
    """Every record under `folder` (default: the whole trail), oldest first."""
    prefix = audit_prefix(vault.environment) + (f"{folder}/" if folder else "")
    records = [read_record(vault, obj.key) for obj in vault.store.list(prefix)]
    return sorted((r for r in records if r is not None), key=lambda r: (r.recorded_at, r.key))


def operator() -> str:
    """Who runs a CLI command: the login name (as `request-restore --requester` defaults to)."""
    try:
        return redact(getpass.getuser()) or "unknown"
    except (KeyError, OSError):
        return "unknown"


@contextlib.contextmanager
def staging_operation(
    vault: Vault, record: str, body: dict[str, Any], *, actor: str, now: Clock = utcnow
) -> Iterator[dict[str, Any]]:
    """Run the block and append one `staging/` record of how it ended: who, what, the outcome.

    The block adds what it learns (the backup's SHA-256, what was swapped) to the yielded dict.
    A failure is recorded with its one-line reason and raised again; if the trail cannot be
    written then, that is logged and the operation's own failure is the one that surfaces.
    """
    learned: dict[str, Any] = {}
    what = {**body, "actor": redact(actor) or "unknown"}
    try:
        yield learned
    except BaseException as exc:
        reason = redact(" ".join(str(exc).split())) or type(exc).__name__
        try:
            append(
                vault,
                "staging",
                record,
                {**what, **learned, "succeeded": False, "detail": reason},
                now=now(),
            )
        except PgvaultError as lost:
            log.warning("the failed %s could not be recorded in the audit trail (%s)", record, lost)
        raise
    append(vault, "staging", record, {**what, **learned, "succeeded": True}, now=now())


def record_integrity_check(
    vault: Vault,
    manifest: Manifest,
    database: str,
    *,
    passed: bool,
    failed_checks: list[str],
    now: Clock = utcnow,
) -> AuditRecord:
    return append(
        vault,
        "staging",
        INTEGRITY_CHECK,
        {
            "date": manifest.date.isoformat(),
            "sha256": manifest.sha256,
            "database": database,
            "passed": passed,
            "failed_checks": failed_checks,
        },
        now=now(),
    )


def staging_verified(vault: Vault, day: date, sha256: str) -> bool:
    """Was this exact backup restored to staging and did staging then pass its integrity checks?

    Walks the staging records in order, tracking which backup staging holds: a pass counts
    only while staging still holds the backup of `day` with `sha256` (a later restore of
    another backup makes an earlier pass irrelevant to what staging holds now, not untrue).
    A rollback, or a recovery to a point in time, swaps in a database the trail cannot name
    as a dated backup: until the next restore, staging holds no known backup, and a failed restore or rollback changed nothing.
    """
    holding: tuple[object, object] | None = None
    wanted = (day.isoformat(), sha256)
    for record in audit_records(vault, "staging"):
        backup = (record.body.get("date"), record.body.get("sha256"))
        if record.body.get("succeeded") is False:
            continue
        if record.record == STAGING_RESTORE:
            holding = backup
        elif record.record in (STAGING_ROLLBACK, STAGING_RESTORE_TO_TIME):
            holding = None
        elif (
            record.record == INTEGRITY_CHECK
            and record.body.get("passed") is True
            and backup == wanted == holding
        ):
            return True
    return False


def staging_recovered_to(vault: Vault, time: str, base_backup: str) -> bool:
    """Does staging hold, by the trail, a recovery to `time` from `base_backup`? The last
    successful staging restore of any kind decides: a later one replaced it."""
    holding: tuple[object, object] | None = None
    for record in audit_records(vault, "staging"):
        if record.body.get("succeeded") is False:
            continue
        if record.record == STAGING_RESTORE_TO_TIME:
            holding = (record.body.get("time"), record.body.get("base_backup"))
        elif record.record in (STAGING_RESTORE, STAGING_ROLLBACK):
            holding = None
    return holding == (time, base_backup)
