"""How long a stored backup is immutable: until the first day retention may delete it.

In a bucket with S3 Object Lock, every backup object and manifest carries a retain-until date
from its retention tier, so stolen credentials cannot delete or overwrite a backup early, and
the lock never outlives the policy: it ends at midnight UTC of the day cleanup first plans
the deletion (age past the tier's days). Audit records are locked in compliance mode for as
long as the longest-kept backup they can describe.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta

from pgvault_assets.engine.basics.policy import retention_days, tier_of
from pgvault_assets.settings import RetentionPolicy

AUDIT_LOCK_MODE = "COMPLIANCE"


def backup_retain_until(
    day: date, policy: RetentionPolicy, *, now: datetime, backed_up: Iterable[date] = ()
) -> datetime | None:
    """The lock date for the backup of `day` beside the backups `backed_up`; None when that
    date has already passed. A backup that later loses its tier to an earlier one backed up
    after it stays locked longer than retention needs: never shorter."""
    days = retention_days(tier_of(day, policy, backed_up=backed_up), policy)
    until = datetime.combine(day + timedelta(days=days + 1), time(), tzinfo=UTC)
    return until if until > now else None


def audit_retain_until(policy: RetentionPolicy, *, now: datetime) -> datetime:
    """An audit record outlives every backup it can name: the longest tier from `now`."""
    longest = max(policy.daily_days, policy.weekly_days, policy.monthly_days)
    return now.astimezone(UTC) + timedelta(days=longest)
