"""`pgvault metrics` (Prometheus exposition) and `pgvault alerts test` (the sinks' wiring).

The figures come from the store (`engine/monitoring/metrics.py`) and, for the alert episodes only the
run and check history holds, from the Dagster instance (`defs/run_episodes.py`); this module
only names them for Prometheus, serves them over HTTP or writes them for node_exporter's
textfile collector. Dagster is imported where it is used, as `cli/platform.py` explains.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pgvault_assets.cli.args import Parser
from pgvault_assets.cli.console import console
from pgvault_assets.engine.monitoring.metrics import (
    DEFAULT_REFRESH,
    SINGLE_DATABASE,
    MetricsReader,
    Snapshot,
)
from pgvault_assets.errors import ConfigError
from pgvault_assets.fleet import load_fleet
from pgvault_assets.settings import Settings

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from pgvault_assets.defs.run_episodes import RunHistory, RunHistoryReader

LABELS = ["environment", "database"]
TEST_LEVELS = ("fatal", "error", "warning", "info")


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


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("metrics", help="Prometheus metrics of every database's backups")
    verbs = group.add_subparsers(
        dest="metrics_command", metavar="VERB", parser_class=Parser, required=True
    )
    sub = verbs.add_parser("serve", help="serve /metrics over HTTP until stopped")
    sub.add_argument("--port", type=int, required=True, help="the port to listen on")
    sub.add_argument("--host", default="127.0.0.1", help="the address (default 127.0.0.1)")
    sub.add_argument(
        "--refresh-seconds",
        type=int,
        default=int(DEFAULT_REFRESH.total_seconds()),
        help="re-read each database's store at most this often (default 60)",
    )
    sub.set_defaults(handler=serve_command)
    sub = verbs.add_parser(
        "write", help="write the metrics to FILE for node_exporter's textfile collector"
    )
    sub.add_argument("file", type=Path, help="e.g. /var/lib/node_exporter/pgvault.prom")
    sub.set_defaults(handler=write_command)

    group = commands.add_parser("alerts", help="the alert sinks (Sentry, webhook, PagerDuty)")
    verbs = group.add_subparsers(
        dest="alerts_command", metavar="VERB", parser_class=Parser, required=True
    )
    sub = verbs.add_parser("test", help="send a test alert of each severity to every sink")
    sub.add_argument("--resolve", action="store_true", help="then resolve them")
    sub.set_defaults(handler=alerts_test_command)


def serve_command(args: argparse.Namespace, settings: Settings) -> int:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be from 1 to 65535 (got {args.port})")
    if args.refresh_seconds < 1:
        raise ConfigError(f"--refresh-seconds must be at least 1 (got {args.refresh_seconds})")
    from pgvault_assets.cli.platform import open_instance

    registry = CollectorRegistry(auto_describe=False)
    try:
        server, thread = start_http_server(args.port, args.host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {args.host}:{args.port} ({exc.strerror}); choose another --port"
        ) from None
    # The port first: a port in use is refused before the instance is opened (and its
    # warnings printed).
    with open_instance() as instance:
        refresh = timedelta(seconds=args.refresh_seconds)
        registry.register(collector_for(settings, refresh, instance))
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        console.print(f"serving metrics on http://{args.host}:{args.port}/metrics")
        stop.wait()
        server.shutdown()
        server.server_close()
        thread.join()
    return 0


def write_command(args: argparse.Namespace, settings: Settings) -> int:
    target: Path = args.file.expanduser().absolute()
    if not target.parent.is_dir():
        raise ConfigError(f"{target.parent} is not a directory; create it or write elsewhere")
    # write_to_textfile writes a temporary file beside the target and renames it over: a
    # collector never reads half a file.
    from pgvault_assets.cli.platform import open_instance

    try:
        with open_instance() as instance:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(collector_for(settings, DEFAULT_REFRESH, instance))
            write_to_textfile(str(target), registry)
    except OSError as exc:
        raise ConfigError(f"cannot write {target} ({exc.strerror}); check its folder") from None
    console.print(f"wrote {target}")
    return 0


class _Failures(logging.Handler):
    """The sinks log what they could not deliver rather than raise: counted here."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def alerts_test_command(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.alerts import Alert, Notifier

    notifier = Notifier.from_settings(settings)
    sinks = [
        name
        for name, on in (
            ("Sentry", notifier.sentry_enabled),
            ("webhook", notifier.webhook_url is not None),
            ("PagerDuty", notifier.pagerduty is not None),
        )
        if on
    ]
    if not sinks:
        raise ConfigError(
            "no alert sink is configured; set SENTRY_DSN, ALERT_WEBHOOK_URL or "
            "PAGERDUTY_ROUTING_KEY"
        )
    failures = _Failures()
    logger = logging.getLogger("pgvault_assets.alerts")
    logger.addHandler(failures)
    try:
        kinds = []
        for level in TEST_LEVELS:
            kind = f"test_{level}"
            kinds.append(kind)
            notifier.send(
                Alert(
                    kind,
                    level,
                    f"a test alert of level {level} from pgvault alerts test; nothing is wrong",
                )
            )
            console.print(f"sent {kind} to {', '.join(sinks)}")
        if args.resolve:
            notifier.send(
                Alert("test_resolved", "info", "the test alerts are over", resolves=tuple(kinds))
            )
            console.print(f"resolved {', '.join(kinds)}")
    finally:
        logger.removeHandler(failures)
    if failures.messages:
        raise ConfigError(
            f"{len(failures.messages)} deliveries failed ({failures.messages[0]}); "
            "check the sink's setting"
        )
    return 0
