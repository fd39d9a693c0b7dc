"""Retention tiers: which tier a backup belongs to and how long that tier is kept.

The first backup of each week holds the weekly tier and the first backup of each month the
monthly tier, so a week or a month keeps its long-lived copy even when the backup of its
Sunday or of its 1st failed: the next successful one stands in. Weeks begin on Sunday, so in
a week without failures the Sunday backup is the weekly one, as the operations manual says.
Pure functions of the backup dates and the policy, shared by backups (their Object Lock
dates), retention, cleanup and the catalog.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta
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


def week_of(day: date) -> date:
    """The Sunday that begins `day`'s week."""
    return day - timedelta(days=(day.weekday() - SUNDAY) % 7)


def tiers_of(days: Iterable[date], policy: RetentionPolicy | None = None) -> dict[date, Tier]:
    """The tier of each backup date among `days`; one in two tiers gets the one kept longer."""
    policy = policy or RetentionPolicy()
    ordered = sorted(set(days))
    first_of_week: dict[date, date] = {}
    first_of_month: dict[tuple[int, int], date] = {}
    for day in ordered:
        first_of_week.setdefault(week_of(day), day)
        first_of_month.setdefault((day.year, day.month), day)
    found = {}
    for day in ordered:
        tiers = [Tier.DAILY]
        if first_of_week[week_of(day)] == day:
            tiers.append(Tier.WEEKLY)
        if first_of_month[(day.year, day.month)] == day:
            tiers.append(Tier.MONTHLY)
        found[day] = max(tiers, key=lambda tier: retention_days(tier, policy))
    return found


def tier_of(
    day: date, policy: RetentionPolicy | None = None, *, backed_up: Iterable[date] = ()
) -> Tier:
    """The tier of the backup of `day` beside the other backups there are, `backed_up`."""
    return tiers_of({day, *backed_up}, policy)[day]
