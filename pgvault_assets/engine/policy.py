"""Retention tiers: which tier a backup date belongs to and how long that tier is kept.

Pure functions of a date and the policy, shared by backups (their Object Lock dates),
retention, cleanup and the catalog.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum

from pgvault_assets.settings import RetentionPolicy

SUNDAY = 6


class Tier(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"


def retention_days(tier: Tier, policy: RetentionPolicy) -> int:
    return {
        Tier.DAILY: policy.daily_days,
        Tier.WEEKLY: policy.weekly_days,
        Tier.MONTHLY: policy.monthly_days,
    }[tier]


def tier_of(day: date, policy: RetentionPolicy | None = None) -> Tier:
    """The tier a backup date belongs to; a date in two tiers gets the one kept longer."""
    policy = policy or RetentionPolicy()
    tiers = [Tier.DAILY]
    if day.weekday() == SUNDAY:
        tiers.append(Tier.WEEKLY)
    if day.day == 1:
        tiers.append(Tier.MONTHLY)
    return max(tiers, key=lambda tier: retention_days(tier, policy))
