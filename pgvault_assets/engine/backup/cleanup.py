"""One retention cleanup: plan and delete under the retention lock, then repair leftovers.

A backup commits its object and writes its manifest while holding the retention lock, so a
plan made under that lock sees every backup as committed, and an object then found without
its manifest was left by a killed process, not by one still writing it:

- the object and restore proof of a date with no manifest: a cleanup killed between deleting
  a manifest and its object, or a backup killed after its upload and before its manifest;
- an unfinished S3 multipart upload or a local partial file: a writer killed mid-write.

Nothing that may still belong to a running backup is touched. A date whose backup lock is
held is skipped whole. Leftovers of a date still within its tier's retention, uploads and
partial files go only once `LEFTOVER_AGE` old (and, for a dump without its manifest, once a
later backup succeeded, so it is superseded): a day is longer than any backup run and than
the S3 lock's lease, a partial file's age counts from its last write, and a date is backed up
only on the day after it, so no run pgvault starts can still be writing it. Leftovers of an
expired date go at once: retention deletes that date anyway. While the newest backup is
stale nothing stored is deleted, as for retention itself; unfinished writes, which can never
become a backup, are still removed.
"""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

from pgvault_assets.engine.backup.retention import (
    RetentionDecision,
    RetentionPlan,
    delete_expired,
    plan_retention,
)
from pgvault_assets.engine.basics import names
from pgvault_assets.engine.basics.names import backup_lock_name, retention_lock_name
from pgvault_assets.engine.basics.policy import retention_days, tier_of
from pgvault_assets.engine.storage.store import (
    HeldLock,
    KeptVersion,
    PendingKind,
    PendingUpload,
    Store,
    StoredObject,
)
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import LockBusy
from pgvault_assets.settings import RetentionPolicy

# A backup holds the lock for seconds while it commits; cleanup waits rather than fail.
LOCK_WAIT_SECONDS = 5 * 60
LEFTOVER_AGE = timedelta(days=1)
_DATE_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}")
_BACKUP_FILES = names.BACKUP_FILES


class RepairKind(StrEnum):
    EXPIRED_ORPHAN = "expired_orphan"
    UNFINISHED_ORPHAN = "unfinished_orphan"
    STALE_UPLOAD = "stale_upload"
    STALE_PARTIAL = "stale_partial"
    STALE_VERSION = "stale_version"


# past tense, dry-run tense, one, several, where they come from
_WORDING: dict[RepairKind, tuple[str, str, str, str, str]] = {
    RepairKind.EXPIRED_ORPHAN: (
        "removed",
        "would remove",
        "orphaned object",
        "orphaned objects",
        "of expired backups, left by an interrupted cleanup",
    ),
    RepairKind.UNFINISHED_ORPHAN: (
        "removed",
        "would remove",
        "orphaned object",
        "orphaned objects",
        "of backups interrupted before their manifest",
    ),
    RepairKind.STALE_UPLOAD: (
        "aborted",
        "would abort",
        "stale multipart upload",
        "stale multipart uploads",
        "left by an interrupted backup",
    ),
    RepairKind.STALE_PARTIAL: (
        "removed",
        "would remove",
        "stale partial file",
        "stale partial files",
        "left by an interrupted write",
    ),
    RepairKind.STALE_VERSION: (
        "removed",
        "would remove",
        "unpinned kept version",
        "unpinned kept versions",
        "that no manifest reads, left by an interrupted backup",
    ),
}


# How each kind of unfinished write is reported once found stale.
_PENDING_REPAIRS = {
    PendingKind.MULTIPART_UPLOAD: RepairKind.STALE_UPLOAD,
    PendingKind.PARTIAL_FILE: RepairKind.STALE_PARTIAL,
}


@dataclass(frozen=True)
class Repair:
    """One kind of leftover, and what of it was removed (or, in a dry run, would be)."""

    kind: RepairKind
    keys: tuple[str, ...]
    days: tuple[date, ...]

    def describe(self, *, dry_run: bool = False) -> str:
        done, would, one, several, origin = _WORDING[self.kind]
        count = len(self.keys)
        line = f"{would if dry_run else done} {count} {one if count == 1 else several} {origin}"
        if self.days:
            line += f" ({', '.join(day.isoformat() for day in self.days)})"
        return line

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind.value, "keys": list(self.keys), "summary": self.describe()}


@dataclass(frozen=True)
class CleanupResult:
    plan: RetentionPlan
    deleted_keys: tuple[str, ...]
    repairs: tuple[Repair, ...]
    # What was found but left alone (unreadable backups, leftovers not removable yet), each
    # a line saying why and when it will be.
    kept_leftovers: tuple[str, ...]
    dry_run: bool = False

    @property
    def deleted_backups(self) -> tuple[RetentionDecision, ...]:
        """What was deleted, not what was planned: a backup under Object Lock stays."""
        return tuple(d for d in self.plan.delete if d.manifest_key in self.deleted_keys)

    @property
    def repaired_count(self) -> int:
        return sum(len(repair.keys) for repair in self.repairs)

    def repair_lines(self) -> list[str]:
        return [repair.describe(dry_run=self.dry_run) for repair in self.repairs]


@dataclass(frozen=True)
class Leftover:
    """Something a killed run left in the store, and how to remove it."""

    kind: RepairKind
    key: str
    day: date | None
    upload: PendingUpload | None = None
    version: KeptVersion | None = None


def run_cleanup(
    vault: Vault,
    policy: RetentionPolicy,
    *,
    now: datetime,
    dry_run: bool = False,
    wait_seconds: float = LOCK_WAIT_SECONDS,
    leftover_age: timedelta = LEFTOVER_AGE,
) -> CleanupResult:
    """Apply retention and repair what interrupted runs left, all under the retention lock.

    A dry run takes the same locks and makes the same checks, so it shows exactly what a
    cleanup would do at that moment; it removes nothing. A lock held longer than
    `wait_seconds` raises `LockBusy`.
    """
    environment = vault.environment
    with vault.store.lock(retention_lock_name(environment), wait_seconds=wait_seconds) as held:
        manifests, unreadable = vault.scan_manifests()
        unread = {record.day for record in unreadable}
        plan = plan_retention(manifests, now.date(), policy, now=now)
        orphans = find_orphans(
            environment,
            vault.store.list(f"{environment}/"),
            plan,
            policy,
            now=now,
            leftover_age=leftover_age,
            unread=unread,
        )
        # What cannot be read is neither judged nor removed: it may be a newer pgvault's.
        kept: list[str] = [
            f"kept the backup of {record.day.isoformat()} untouched: {record.reason}"
            for record in unreadable
        ]
        if plan.blocked_reason is not None and orphans:
            kept.append(
                f"kept {_count(len(orphans), 'orphaned object')} "
                f"({_days(o.day for o in orphans)}): nothing stored is deleted while backups "
                "are stale"
            )
            orphans = []
        leftovers = (
            orphans
            + unfinished_writes(vault, now=now, leftover_age=leftover_age)
            + unpinned_versions(vault, manifests, now=now, leftover_age=leftover_age, unread=unread)
        )
        deleted = [] if dry_run else delete_expired(vault, plan, held)
        removed, not_yet = _remove_leftovers(vault, leftovers, held, dry_run=dry_run)
    return CleanupResult(plan, tuple(deleted), _summarize(removed), tuple(kept + not_yet), dry_run)


def find_orphans(
    environment: str,
    objects: list[StoredObject],
    plan: RetentionPlan,
    policy: RetentionPolicy,
    *,
    now: datetime,
    leftover_age: timedelta = LEFTOVER_AGE,
    unread: set[date] | frozenset[date] = frozenset(),
) -> list[Leftover]:
    """Objects and restore proofs of dates without a manifest that are safe to remove.

    `objects` is the environment's listing and `plan` was made from its manifests, both
    under the retention lock; the date locks of running backups are checked on removal.
    Dates in `unread` have a manifest that cannot be read: their files are never orphans.
    """
    backed_up = {decision.day for decision in plan.keep + plan.delete} | set(unread)
    newest = max(backed_up, default=None)
    found = []
    for obj in objects:
        day = date_folder(environment, obj.key)
        if day is None or day in backed_up or obj.key.rsplit("/", 1)[1] not in _BACKUP_FILES:
            continue
        if (plan.today - day).days > retention_days(
            tier_of(day, policy, backed_up=backed_up), policy
        ):
            found.append(Leftover(RepairKind.EXPIRED_ORPHAN, obj.key, day))
        elif now - obj.modified_at >= leftover_age and newest is not None and newest > day:
            found.append(Leftover(RepairKind.UNFINISHED_ORPHAN, obj.key, day))
    return found


def unfinished_writes(
    vault: Vault, *, now: datetime, leftover_age: timedelta = LEFTOVER_AGE
) -> list[Leftover]:
    """Multipart uploads started, and partial files last written, `leftover_age` ago or more."""
    environment = vault.environment
    found = []
    for upload in vault.store.pending_uploads(f"{environment}/"):
        if now - upload.initiated_at >= leftover_age:
            kind = _PENDING_REPAIRS[upload.kind]
            found.append(Leftover(kind, upload.key, date_folder(environment, upload.key), upload))
    return found


def unpinned_versions(
    vault: Vault,
    manifests: list[Manifest],
    *,
    now: datetime,
    leftover_age: timedelta = LEFTOVER_AGE,
    unread: set[date] | frozenset[date] = frozenset(),
) -> list[Leftover]:
    """The versions the store keeps itself (the local `.versions/`) that no manifest pins,
    `leftover_age` old or more: a backup killed between keeping its version and its manifest
    leaves one, and so does one killed between its manifest and pruning. A manifest pins its
    object's and server context's versions, and those of the backups it replaced. Dates in `unread` have a manifest that cannot be read: what it pins is unknown,
    so none of their versions is a leftover."""
    store = vault.store
    environment = vault.environment
    pinned = {
        (m.date, version)
        for current in manifests
        for m in current.versions  # the backups it replaced stay until retention too
        for version in (
            m.object_version_id,
            m.server_context.object_version_id if m.server_context else None,
        )
    }
    backed_up = {m.date for m in manifests}
    found = []
    for kept in store.kept_versions(f"{environment}/"):
        day = date_folder(environment, kept.key)
        if day is None or day in unread or (day, kept.version_id) in pinned:
            continue
        if day not in backed_up and store.exists(kept.key):
            continue  # goes with its object, an orphan of its own
        if now - kept.modified_at >= leftover_age:
            found.append(Leftover(RepairKind.STALE_VERSION, kept.stored_as, day, version=kept))
    return found


def date_folder(environment: str, key: str) -> date | None:
    """The backup date whose folder (`{environment}/{YYYY-MM-DD}/`) directly holds `key`."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != environment or not _DATE_FOLDER.fullmatch(parts[1]):
        return None
    try:
        return date.fromisoformat(parts[1])
    except ValueError:
        return None


def _remove_leftovers(
    vault: Vault, leftovers: list[Leftover], held: HeldLock, *, dry_run: bool
) -> tuple[list[Leftover], list[str]]:
    """Remove each leftover (in a dry run, only check it could be); return those removed and
    a line for each group kept: a date whose backup is running, an object under Object Lock."""
    store = vault.store
    by_day: dict[date | None, list[Leftover]] = defaultdict(list)
    for leftover in leftovers:
        by_day[leftover.day].append(leftover)
    removed: list[Leftover] = []
    running: list[str] = []
    locked: list[tuple[Leftover, datetime]] = []
    for day in sorted(by_day, key=lambda d: d or date.min):
        with contextlib.ExitStack() as date_lock:
            if day is not None:
                try:
                    # Never waits: a backup takes this lock before the retention lock we hold.
                    date_lock.enter_context(store.lock(backup_lock_name(vault.environment, day)))
                except LockBusy:
                    count = len(by_day[day])
                    running.append(
                        f"kept {_count(count, 'leftover')} of {day.isoformat()}: a backup of "
                        f"that date is running; a later cleanup removes {_them(count)}"
                    )
                    continue
            for leftover in by_day[day]:
                held.check()  # a lock lost meanwhile: stop before the next removal
                if leftover.upload is None and leftover.version is None:
                    until = store.retained_until(leftover.key)
                    if until is not None:
                        locked.append((leftover, until))
                        continue
                if not dry_run:
                    _remove(store, leftover)
                removed.append(leftover)
    if locked:
        latest = max(until for _, until in locked)
        running.append(
            f"kept {_count(len(locked), 'orphaned object')} under S3 Object Lock until "
            f"{latest:%Y-%m-%d %H:%M} UTC at the latest; a cleanup after that removes "
            f"{_them(len(locked))} ({_days(leftover.day for leftover, _ in locked)})"
        )
    return removed, running


def _remove(store: Store, leftover: Leftover) -> None:
    if leftover.upload is not None:
        store.abort_upload(leftover.upload)
    elif leftover.version is not None:
        store.remove_version(leftover.version)
    else:
        store.delete(leftover.key)


def _summarize(removed: list[Leftover]) -> tuple[Repair, ...]:
    repairs = []
    for kind in RepairKind:
        of_kind = [leftover for leftover in removed if leftover.kind is kind]
        if of_kind:
            repairs.append(
                Repair(
                    kind,
                    tuple(sorted(leftover.key for leftover in of_kind)),
                    tuple(sorted({leftover.day for leftover in of_kind if leftover.day})),
                )
            )
    return tuple(repairs)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _them(n: int) -> str:
    return "it" if n == 1 else "them"


def _days(days: Iterable[date | None]) -> str:
    return ", ".join(sorted({day.isoformat() for day in days if day is not None}))
