"""Settings that shape the definitions themselves, read when the code location loads.

The partitions' start date and the retry policy are part of each definition, not of a run,
so they cannot wait for a resource; none of them is a secret. A bad value stops the code
location from loading with one line naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from pgvault_assets.errors import ConfigError

# A fixed default: partitions must not move each day, or yesterday's run would be renumbered.
DEFAULT_START_DATE = date(2025, 1, 1)


@dataclass(frozen=True)
class PlatformConfig:
    start_date: date = DEFAULT_START_DATE
    max_retries: int = 3
    retry_delay_seconds: float = 60.0


def _number(env: Mapping[str, str], name: str, default: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number from 0 to {high:g} (got {raw!r})") from None
    if not 0 <= value <= high:
        raise ConfigError(f"{name} must be a number from 0 to {high:g} (got {raw!r})")
    return value


def platform_config(env: Mapping[str, str] | None = None) -> PlatformConfig:
    env = os.environ if env is None else env
    raw_start = env.get("BACKUP_START_DATE", "").strip()
    try:
        start = date.fromisoformat(raw_start) if raw_start else DEFAULT_START_DATE
    except ValueError:
        raise ConfigError(
            f"BACKUP_START_DATE must be a date like 2025-01-01 (got {raw_start!r})"
        ) from None
    retries = _number(env, "BACKUP_MAX_RETRIES", 3, 20)
    if retries != int(retries):
        raise ConfigError(f"BACKUP_MAX_RETRIES must be a whole number (got {retries:g})")
    return PlatformConfig(
        start_date=start,
        max_retries=int(retries),
        retry_delay_seconds=_number(env, "BACKUP_RETRY_DELAY_SECONDS", 60, 3600),
    )
