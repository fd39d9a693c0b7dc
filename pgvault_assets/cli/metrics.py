"""`pgvault metrics` (Prometheus exposition) and `pgvault alerts test` (the sinks' wiring).

The figures come from the store (`engine/monitoring/metrics.py`) and, for the alert episodes only the
run and check history holds, from the Dagster instance (`defs/run_episodes.py`); this module
only names them for Prometheus, serves them over HTTP or writes them for node_exporter's
textfile collector. Dagster is imported where it is used, as `cli/platform.py` explains, and
so is the exposition (`cli/exposition.py`), with `prometheus_client`.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from datetime import timedelta
from pathlib import Path

from pgvault_assets.cli.args import Parser
from pgvault_assets.cli.console import console
from pgvault_assets.engine.monitoring.metrics import DEFAULT_REFRESH
from pgvault_assets.errors import ConfigError
from pgvault_assets.settings import Settings

TEST_LEVELS = ("fatal", "error", "warning", "info")


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
    from prometheus_client import CollectorRegistry, start_http_server

    from pgvault_assets.cli.exposition import collector_for
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
    from prometheus_client import CollectorRegistry, write_to_textfile

    from pgvault_assets.cli.exposition import collector_for
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
