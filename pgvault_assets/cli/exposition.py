"""The Prometheus exposition of the metrics: the store's figures and the run history as gauges.

Apart from `cli/metrics.py` because `prometheus_client` is imported here, at the top: only the
two commands that expose metrics load it, not every command that builds the parser.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pgvault_assets.engine.monitoring.metrics import SINGLE_DATABASE, MetricsReader, Snapshot
from pgvault_assets.fleet import load_fleet
from pgvault_assets.settings import Settings

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from pgvault_assets.defs.run_episodes import RunHistory, RunHistoryReader

LABELS = ["environment", "database"]


def _seconds(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment else None


class SnapshotCollector(Collector):
    """The readers' snapshot and history as gauges, read anew (and cached by the readers) per
    scrape."""

    def __init__(self, reader: MetricsReader, history: RunHistoryReader) -> None:
        self.reader = reader
        self.history = history

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = self.reader.read()
        yield from families(snapshot, self.history.read(snapshot.read_at))


def _gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=LABELS + (labels or []))


def families(snapshot: Snapshot, history: RunHistory) -> list[GaugeMetricFamily]:
    env = snapshot.environment
    per_database: list[tuple[str, str, str]] = [
        ("backup_last_success_timestamp_seconds", "last_success", "newest backup's finish"),
        ("backup_last_size_bytes", "last_size_bytes", "newest backup's stored size"),
        ("backup_last_duration_seconds", "last_duration_seconds", "newest backup's duration"),
        ("backup_oldest_timestamp_seconds", "oldest", "oldest backup held, its finish"),
        ("backups_stored", "backups_stored", "backups held (readable manifests)"),
        ("storage_bytes", "storage_bytes", "bytes the backups held take in the store"),
        (
            "restore_proof_last_success_timestamp_seconds",
            "proof",
            "when a backup was last proven to restore",
        ),
        (
            "restore_proof_last_attempt_timestamp_seconds",
            "proof_attempt",
            "when the last restore proof finished, passed or failed",
        ),
        (
            "restore_proof_last_result",
            "proof_result",
            "1 when the last restore proof passed, 0 when it failed",
        ),
        ("drill_last_timestamp_seconds", "drill_at", "when the last recovery drill started"),
        ("drill_last_rto_seconds", "drill_last_rto_seconds", "last drill's scaled recovery time"),
        ("drill_last_passed", "drill_passed", "1 when the last drill passed, 0 when it failed"),
        ("pitr_window_start_timestamp_seconds", "pitr_start", "earliest recoverable time"),
        ("pitr_window_end_timestamp_seconds", "pitr_end", "latest recoverable time"),
        ("pitr_archive_lag_seconds", "pitr_lag", "age of the newest archived WAL while WAL waits"),
        ("database_readable", "readable", "1 when the database's store could be read"),
    ]
    gauges = {
        attribute: _gauge(f"pgvault_{name}", f"pgvault: {text}")
        for name, attribute, text in per_database
    }
    alerts = _gauge("pgvault_alerts_open", "pgvault: open alert episodes by kind", ["kind"])
    for figures in snapshot.databases:
        pitr = figures.pitr
        values = {
            "last_success": _seconds(figures.last_success_at),
            "last_size_bytes": figures.last_size_bytes,
            "last_duration_seconds": figures.last_duration_seconds,
            "oldest": _seconds(figures.oldest_backup_at),
            "backups_stored": figures.backups_stored if figures.error is None else None,
            "storage_bytes": figures.storage_bytes if figures.error is None else None,
            "proof": _seconds(figures.restore_proof_last_success_at),
            "proof_attempt": _seconds(figures.restore_proof_last_attempt_at),
            "proof_result": None
            if figures.restore_proof_last_passed is None
            else int(figures.restore_proof_last_passed),
            "drill_at": _seconds(figures.drill_last_at),
            "drill_last_rto_seconds": figures.drill_last_rto_seconds,
            "drill_passed": None
            if figures.drill_last_passed is None
            else int(figures.drill_last_passed),
            "pitr_start": _seconds(pitr.window_start) if pitr else None,
            "pitr_end": _seconds(pitr.window_end) if pitr else None,
            "pitr_lag": pitr.archive_lag_seconds if pitr else None,
            "readable": int(figures.error is None),
        }
        for attribute, value in values.items():
            if value is not None:
                gauges[attribute].add_metric([env, figures.database], float(value))
        dates = figures.backup_dates if figures.error is None else None
        episodes = {
            **figures.open_alerts(snapshot.read_at),
            **history.open_alerts(figures.database, dates, snapshot.read_at.date()),
        }
        for kind, count in episodes.items():
            alerts.add_metric([env, figures.database, kind], float(count))
    for kind, count in snapshot.open_alerts().items():
        alerts.add_metric([env, SINGLE_DATABASE, kind], float(count))
    found = [*gauges.values(), alerts]
    if snapshot.storage_budget_bytes is not None:
        budget = GaugeMetricFamily(
            "pgvault_storage_budget_bytes",
            "pgvault: BACKUP_STORAGE_BUDGET_BYTES, the environment's storage budget",
            labels=["environment"],
        )
        budget.add_metric([env], float(snapshot.storage_budget_bytes))
        found.append(budget)
    return found


def collector_for(
    settings: Settings, refresh: timedelta, instance: DagsterInstance
) -> SnapshotCollector:
    from pgvault_assets.cli.platform import dagster_previews_hidden

    with dagster_previews_hidden():
        from pgvault_assets.defs.run_episodes import RunHistoryReader, backup_keys

    keys = backup_keys(load_fleet(settings.platform.fleet_file))
    return SnapshotCollector(
        MetricsReader(settings, os.environ, refresh=refresh),
        RunHistoryReader(instance, settings.environment, keys, refresh),
    )
