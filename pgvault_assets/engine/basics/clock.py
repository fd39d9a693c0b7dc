"""Time in one place: engine functions that need "now" take a `Clock`, so tests can move it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def latest_complete_day(now: datetime) -> date:
    """Yesterday in UTC: the newest day whose data is complete and so can be backed up."""
    return now.astimezone(UTC).date() - timedelta(days=1)


def aware(value: object, name: str) -> datetime:
    """A stored ISO 8601 time with its zone; a naive one would fail every comparison with
    the clock, so it is refused as a ValueError the caller turns into its own error."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be an ISO 8601 time")
    moment = datetime.fromisoformat(value)
    if moment.utcoffset() is None:
        raise ValueError(f"{name} must carry a time zone")
    return moment
