"""`pgvault metrics` (Prometheus exposition) and `pgvault alerts test` (the sinks' wiring).

The figures come from `engine/metrics.py`; this module only names them for Prometheus, serves
them over HTTP or writes them for node_exporter's textfile collector.
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

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pgvault_assets.cli.args import Parser
from pgvault_assets.cli.console import console
from pgvault_assets.engine.metrics import DEFAULT_REFRESH, MetricsReader, Snapshot
from pgvault_assets.errors import ConfigError
from pgvault_assets.settings import Settings

LABELS = ["environment", "database"]
TEST_LEVELS = ("fatal", "error", "warning", "info")


def _seconds(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment else None


class SnapshotCollector(Collector):
    """The reader's snapshot as gauges, read anew (and cached by the reader) per scrape."""

    def __init__(self, reader: MetricsReader) -> None:
        self.reader = reader

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from families(self.reader.read())


def _gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=LABELS + (labels or []))


def families(snapshot: Snapshot) -> list[GaugeMetricFamily]:
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
        for kind, count in figures.open_alerts(snapshot.read_at).items():
            alerts.add_metric([env, figures.database, kind], float(count))
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


def registry_for(settings: Settings, refresh: timedelta) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(MetricsReader(settings, os.environ, refresh=refresh)))
    return registry


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
    registry = registry_for(settings, timedelta(seconds=args.refresh_seconds))
    try:
        server, thread = start_http_server(args.port, args.host, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {args.host}:{args.port} ({exc.strerror}); choose another --port"
        ) from None
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
    try:
        write_to_textfile(str(target), registry_for(settings, DEFAULT_REFRESH))
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
