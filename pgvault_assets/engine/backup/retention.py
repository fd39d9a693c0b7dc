"""Which backups to keep and which to delete, as pure functions of the backups and a date.

The operations manual's policy: daily backups live 30 days, Sunday backups 90, backups of the
1st of a month 365. Two guards sit above the policy, because deleting is the one thing a
backup tool cannot undo: never leave fewer than `min_keep` backups, and delete nothing while
the newest backup is older than 36 hours (a broken backup job must not let retention eat the
last good backups one by one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta

from pgvault_assets.engine.basics import names
from pgvault_assets.engine.basics.names import (
    RESTORE_FAILED_NAME,
    RESTORE_VERIFIED_NAME,
    SERVER_CONTEXT_NAME,
    retention_lock_name,
)
from pgvault_assets.engine.basics.policy import Tier, retention_days, tiers_of
from pgvault_assets.engine.basics.testpoints import pause_point
from pgvault_assets.engine.storage.store import HeldLock
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.settings import RetentionPolicy

_log = logging.getLogger(__name__)

MIN_KEEP = 7
NEWEST_MAX_AGE = timedelta(hours=36)


@dataclass(frozen=True)
class RetentionDecision:
    day: date
    tier: Tier
    age_days: int
    size_bytes: int
    manifest_key: str
    object_key: str
    reason: str


@dataclass(frozen=True)
class RetentionPlan:
    today: date
    keep: tuple[RetentionDecision, ...]
    delete: tuple[RetentionDecision, ...]
    blocked_reason: str | None = None

    @property
    def kept_per_tier(self) -> dict[str, int]:
        counts = {tier.value: 0 for tier in Tier}
        for decision in self.keep:
            counts[decision.tier.value] += 1
        return counts

    @property
    def storage_kept_bytes(self) -> int:
        return sum(decision.size_bytes for decision in self.keep)

    @property
    def storage_freed_bytes(self) -> int:
        return sum(decision.size_bytes for decision in self.delete)


def plan_retention(
    manifests: list[Manifest],
    today: date,
    policy: RetentionPolicy,
    *,
    now: datetime,
    min_keep: int = MIN_KEEP,
    newest_max_age: timedelta = NEWEST_MAX_AGE,
) -> RetentionPlan:
    """Decide each backup's fate; the plan is the same whether it is shown or applied."""
    ordered = sorted(manifests, key=lambda m: m.date, reverse=True)
    tiers = tiers_of((m.date for m in ordered), policy)
    decisions: list[tuple[RetentionDecision, bool]] = []
    for manifest in ordered:
        tier = tiers[manifest.date]
        age = (today - manifest.date).days
        limit = retention_days(tier, policy)
        expired = age > limit
        reason = (
            f"{tier.value} backup {age} days old, past its {limit} days"
            if expired
            else f"{tier.value} backup within its {limit} days"
        )
        decisions.append(
            (
                RetentionDecision(
                    manifest.date,
                    tier,
                    age,
                    sum(version.size_bytes for version in manifest.versions),
                    names.manifest_key(manifest.environment, manifest.date),
                    manifest.object_key,
                    reason,
                ),
                expired,
            )
        )

    newest = max(ordered, key=lambda m: m.finished_at, default=None)
    if newest is not None and now - newest.finished_at > newest_max_age:
        hours = (now - newest.finished_at).total_seconds() / 3600
        blocked = (
            f"the newest backup ({newest.date.isoformat()}) finished {hours:.0f} h ago, more "
            f"than {newest_max_age.total_seconds() / 3600:.0f} h; nothing is deleted until "
            "backups succeed again"
        )
        return RetentionPlan(today, tuple(d for d, _ in decisions), (), blocked)

    keep: list[RetentionDecision] = []
    delete: list[RetentionDecision] = []
    for decision, expired in decisions:
        if not expired:
            keep.append(decision)
        elif len(keep) < min_keep:
            keep.append(
                replace(
                    decision,
                    reason=f"{decision.reason}; kept so at least {min_keep} backups remain",
                )
            )
        else:
            delete.append(decision)
    return RetentionPlan(today, tuple(keep), tuple(delete))


def apply_retention(vault: Vault, plan: RetentionPlan, *, wait_seconds: float = 0) -> list[str]:
    """Delete the plan's expired backups under the retention lock; return the keys deleted.

    `run_cleanup` is the whole cleanup (plan made under the lock, leftovers repaired); this is
    for a plan already in hand, and refuses at once by default when the lock is held.
    """
    if plan.blocked_reason is not None:
        return []
    with vault.store.lock(
        retention_lock_name(vault.environment), wait_seconds=wait_seconds
    ) as lock:
        return delete_expired(vault, plan, lock)


def delete_expired(vault: Vault, plan: RetentionPlan, lock: HeldLock | None = None) -> list[str]:
    """Delete the plan's expired backups; the caller holds the retention lock.

    The manifest goes first: from that moment the backup is no longer listed, so a run cut
    short leaves at worst an orphaned object, never a listed backup whose object is gone (the
    next cleanup removes the orphan). Every stored version is deleted (expired means gone, not
    hidden behind a delete marker). With `lock`, it is checked before each backup: a
    lock lost mid-run stops the deletes before a backup committing meanwhile could be judged
    by a stale plan.
    """
    if plan.blocked_reason is not None:
        return []
    deleted: list[str] = []
    for decision in plan.delete:
        if lock is not None:
            lock.check()
        # Object Lock: touch neither key of a backup still locked, so none is half-deleted.
        held = [
            until
            for key in (decision.manifest_key, decision.object_key)
            if (until := vault.store.retained_until(key)) is not None
        ]
        if held:
            _log.warning(
                "backup %s is under S3 Object Lock until %s UTC; not deleted yet, "
                "a cleanup after that date deletes it",
                decision.day.isoformat(),
                f"{max(held):%Y-%m-%d %H:%M}",
            )
            continue
        if vault.store.delete(decision.manifest_key):
            deleted.append(decision.manifest_key)
        pause_point("cleanup-object")
        folder = decision.manifest_key.rsplit("/", 1)[0]
        for key in (
            decision.object_key,
            f"{folder}/{SERVER_CONTEXT_NAME}",
            f"{folder}/{RESTORE_VERIFIED_NAME}",
            f"{folder}/{RESTORE_FAILED_NAME}",
        ):
            if vault.store.delete(key):
                deleted.append(key)
    return deleted
