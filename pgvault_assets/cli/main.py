"""The `pgvault` command: parse, call the engine, print.

Every failure an operator can cause or meet ends as one line on stderr and a non-zero exit
status; a traceback only with --debug.

Every command builds the whole parser, so the command modules import at their top only what
parsing and the light commands need; Dagster, boto3, psycopg and the Encryption SDK together
cost most of a second. A command that reaches PostgreSQL, S3, the SDK or Dagster imports the
modules that do so when it runs (tests/test_cli_imports.py holds this; bench/bench_cli.py
times it).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import signal
import sys

from pgvault_assets.cli import backups, deploy, fleet, metrics, pitr, platform, recovery
from pgvault_assets.cli.args import Parser, shows_every_database
from pgvault_assets.cli.console import errors, print_warnings
from pgvault_assets.engine.basics.interrupts import Interrupted, signals_interrupt
from pgvault_assets.errors import PgvaultError
from pgvault_assets.fleet import pin_database
from pgvault_assets.redact import redact
from pgvault_assets.settings import load_settings

EXAMPLES = """\
examples:
  pgvault backup                                  back up yesterday (UTC), the latest complete day
  pgvault list-backups --days 30
  pgvault verify-backup --date 2025-11-06         checksum and full decrypt, nothing restored
  pgvault restore-from-backup --date 2025-11-06 --target staging --verify
  pgvault check-database-integrity --database staging
  pgvault rollback-restore --target staging       put back the database a restore replaced
  pgvault restore-to-time --time 2026-11-30T09:15:00Z --target staging   point-in-time recovery
  pgvault metrics serve --port 9187                Prometheus /metrics of every database
  pgvault alerts test --resolve                   prove Sentry, the webhook and PagerDuty are wired
"""


CLI_GC_THRESHOLDS = (10_000, 10, 10)
"""The console script's garbage collection thresholds (Python's are 700, 10, 10)."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pgvault",
        description="Backup and recovery for PostgreSQL: dump, compress, encrypt, store, verify, restore.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=Parser, required=True
    )

    platform.register(commands)
    recovery.register(commands)
    deploy.register(commands)
    backups.register(commands)
    pitr.register(commands)
    fleet.register(commands)
    metrics.register(commands)

    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        # The console script: the process ends with this command. Its last garbage
        # collection would walk every object the command left (most of a second of CPU after
        # a backup has loaded Dagster); frozen, they are left to the OS, which frees them.
        atexit.register(gc.freeze)
        # A command that runs loads Dagster, SQLAlchemy and the Encryption SDK: hundreds of
        # thousands of objects that live as long as the process. At Python's default
        # thresholds the collector walks them again and again while they load, a fifth of a
        # backup's CPU; every 10,000 allocations instead of 700, the garbage a command makes
        # is still collected, in 40 collections instead of 560 (bench/bench_cli.py).
        gc.set_threshold(*CLI_GC_THRESHOLDS)
    parser = build_parser()
    args = parser.parse_args(argv)
    print_warnings()
    try:
        with signals_interrupt():
            settings = load_settings()
            if hasattr(args, "fleet_database") and not shows_every_database(args, settings):
                settings = pin_database(settings, os.environ, args.fleet_database)
            code = int(args.handler(args, settings))
            sys.stdout.flush()  # a closed pipe is met here, not at exit, where it would print
            return code
    except Interrupted as exc:
        errors.print(f"error: {redact(str(exc))}", markup=False)
        return exc.exit_code
    except PgvaultError as exc:
        if args.debug:
            raise
        errors.print(f"error: {redact(str(exc))}")
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (`pgvault list-backups --json | head`): stop quietly, as a
        # command killed by SIGPIPE would, without a second error when stdout is flushed.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        errors.print("error: interrupted; nothing half-done was recorded")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        errors.print(
            f"error: unexpected {type(exc).__name__}: {redact(str(exc))} (run with --debug for details)"
        )
        return 1
