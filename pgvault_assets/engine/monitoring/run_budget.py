"""How long a daily backup run may take before the watchers call it stuck: from its own past.

The daily run dumps, decrypts the whole backup and restores it (`RESTORE_VERIFY_SCHEDULE`):
about three backups' time. Fixed limits that suit a small database fail a large one's every
run as hung or missed; limits that follow the longest of the recent backups grow with it,
and never fall below the defaults a small database is watched by.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from pgvault_assets.alerts import CHECKIN_MARGIN_MINUTES, MAX_RUNTIME_MINUTES
from pgvault_assets.engine.vault.manifest import Manifest

RECENT_BACKUPS = 7
# Dump, full decrypt and restore proof: each about one backup's time.
RUNTIME_FACTOR = 3
# dagster.yaml's `run_monitoring.max_runtime_seconds`: the floor of the run's own limit.
DAGSTER_MAX_RUNTIME_SECONDS = 6 * 3600
# The tag Dagster's run monitor reads for one run's limit, over the instance's.
MAX_RUNTIME_TAG = "dagster/max_runtime"


@dataclass(frozen=True)
class RunBudget:
    longest_recent_seconds: float = 0.0

    @property
    def max_runtime_seconds(self) -> int:
        """Dagster's run monitor fails the run after this long."""
        return max(
            DAGSTER_MAX_RUNTIME_SECONDS, math.ceil(RUNTIME_FACTOR * self.longest_recent_seconds)
        )

    @property
    def sentry_max_runtime_minutes(self) -> int:
        """Sentry marks an in-progress check-in timed out after this long."""
        return max(
            MAX_RUNTIME_MINUTES, math.ceil(RUNTIME_FACTOR * self.longest_recent_seconds / 60)
        )

    @property
    def sentry_checkin_margin_minutes(self) -> int:
        """How late the check-in may come: one backup at a time, so a run queued behind
        another (a manual backup, a backfill) starts up to one backup's time late."""
        return max(CHECKIN_MARGIN_MINUTES, math.ceil(self.longest_recent_seconds / 60))


def run_budget(manifests: Iterable[Manifest]) -> RunBudget:
    """The budget from the longest of the last `RECENT_BACKUPS` recorded backups."""
    recent = sorted(manifests, key=lambda manifest: manifest.date)[-RECENT_BACKUPS:]
    return RunBudget(max((m.duration_seconds for m in recent), default=0.0))
