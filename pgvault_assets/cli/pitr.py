"""Point-in-time recovery: set up WAL archiving, see the window, recover to a time.

A thin shell over `engine.pitr` and `engine.restore`: parse, call, print. Each command
imports pgBackRest's and the restore's modules when it runs (main.py says why).
"""

from __future__ import annotations

import argparse

from pgvault_assets.cli.args import Parser, add_database_option, confirm, parse_time
from pgvault_assets.cli.console import console, human_bytes, on_target
from pgvault_assets.cli.recovery import production_rollback_hint, target_to_write
from pgvault_assets.engine.approvals import audit
from pgvault_assets.engine.basics.names import database_option
from pgvault_assets.engine.pitr import BACKUP_KINDS
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import ConfigError
from pgvault_assets.settings import Settings

EXAMPLES = """\
examples:
  pgvault pitr init                       configure pgBackRest, create the stanza, print the lines to add
  pgvault pitr backup --type full         a base backup (the Dagster schedule takes them weekly/daily)
  pgvault pitr status                     the recoverable window, the archive's lag and health
  pgvault restore-to-time --time 2026-11-30T09:15:00Z --target staging
  pgvault pitr init --database billing    a fleet file: set up billing's server (one stanza each)
"""


PER_SERVER = (
    "Point-in-time recovery is per server: pgBackRest archives the whole server in one stanza "
    "and every database on it recovers from it. With a fleet file (PGVAULT_FLEET_FILE), "
    "--database NAME picks the database and so its server; without one, DATABASE_URL's."
)


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser(
        "pitr",
        help="point-in-time recovery by pgBackRest: init, status, backup",
        description=PER_SERVER,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = group.add_subparsers(
        dest="pitr_command", metavar="VERB", parser_class=Parser, required=True
    )
    sub = verbs.add_parser(
        "init", help="write pgBackRest's configuration, create the stanza, check archiving"
    )
    add_database_option(sub)
    sub.set_defaults(handler=cmd_init)
    sub = verbs.add_parser(
        "status", help="the recoverable window, archive lag, archiver state, gaps"
    )
    add_database_option(sub)
    sub.set_defaults(handler=cmd_status)
    sub = verbs.add_parser("backup", help="take a base backup now")
    sub.add_argument("--type", dest="kind", choices=BACKUP_KINDS, default="full")
    add_database_option(sub)
    sub.set_defaults(handler=cmd_backup)

    sub = commands.add_parser(
        "restore-to-time",
        help="recover to a point in time, then swap it into the target like a restore",
        description=PER_SERVER,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument("--time", type=parse_time, required=True, help="ISO 8601, with a zone")
    sub.add_argument("--target", choices=("staging", "production"), required=True)
    sub.add_argument("--request", default=None, help="production: the dual-approved request id")
    sub.add_argument(
        "--skip-confirmation", action="store_true", help="do not ask to type the database name"
    )
    add_database_option(sub)
    sub.set_defaults(handler=cmd_restore_to_time)


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.pitr.archive import init_pitr

    result = init_pitr(settings, Vault.from_settings(settings))
    console.print(f"pgBackRest configuration: {result.config_file} (stanza {result.stanza})")
    if result.archiving:
        console.print("archiving is on and pgBackRest's check passed")
        return 0
    console.print("add these lines to postgresql.conf, then restart PostgreSQL:", markup=False)
    for line in result.server_lines:
        console.print(f"  {line}", markup=False)
    option = f" --database {settings.database}" if settings.database else ""
    console.print(
        "archive_mode takes effect only at a restart; afterwards run pgvault pitr init"
        f"{option} again to check archiving, then pgvault pitr backup{option} --type full"
    )
    return 0


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.pitr.archive import take_base_backup

    backup = take_base_backup(settings, args.kind, annotations={"pgvault": "cli"})
    console.print(
        f"{backup.kind} base backup {backup.label}: WAL {backup.wal_start}..{backup.wal_stop}, "
        f"{human_bytes(backup.size_bytes)} ({human_bytes(backup.repository_size_bytes)} stored)"
    )
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.pitr.archive import pitr_status

    status = pitr_status(settings)
    window, archiver = status.window, status.archiver
    if window is not None and window.earliest and window.latest:
        console.print(
            f"recoverable window: {window.earliest:%Y-%m-%d %H:%M:%S}Z .. "
            f"{window.latest:%Y-%m-%d %H:%M:%S}Z ({len(window.backups)} base backups)"
        )
    else:
        console.print("recoverable window: none yet (no base backup)")
    lag = archiver.lag
    console.print(
        f"archiver: {archiver.archived_count} archived, {archiver.failed_count} failed, "
        f"last {archiver.last_archived_wal or 'none'}, {archiver.ready_count} waiting, "
        f"lag {'none' if lag is None else f'{int(lag.total_seconds())} s'}"
    )
    problems = status.problems(settings.pitr.max_lag)
    for _, problem in problems:
        console.print(f"problem: {problem}", markup=False)
    return 1 if problems else 0


def cmd_restore_to_time(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.pitr.archive import tool_for
    from pgvault_assets.engine.recovery.operations import (
        restore_production_to_time,
        restore_staging_to_time,
    )

    source = settings.require_database()
    url = target_to_write(settings, args.target)
    vault = Vault.from_settings(settings)
    pinned = database_option(settings.database)
    if args.target == "production":
        if not args.request:
            raise ConfigError(
                f"recovering production to a time needs an approved request: pgvault "
                f"request-restore {pinned}--kind restore-to-time --time T --target production "
                "--reason TEXT, two approvals, then --request ID (after the same recovery into "
                "staging)"
            )
        result = restore_production_to_time(
            vault,
            tool_for(settings),
            args.request,
            args.time,
            url,
            settings.recovery.require_approvers_file(),
            source=source,
            confirm=None if args.skip_confirmation else confirm,
        )
    else:
        result = restore_staging_to_time(
            vault, tool_for(settings), args.time, url, source=source, actor=audit.operator()
        )
    console.print(
        f"recovered to {args.time:%Y-%m-%d %H:%M:%S.%f}Z from base backup {result.base_backup} "
        f"(recovery stopped at {result.stopped_at}; replay {result.replay_seconds:.1f} s) and "
        f"swapped into {on_target(url.dbname, args.target)}"
    )
    if result.copy.previous:
        undo = (
            f"pgvault rollback-restore {pinned}--target staging"
            if args.target == "staging"
            else production_rollback_hint(settings)
        )
        console.print(f"previous {url.dbname} kept as {result.copy.previous}; undo with: {undo}")
    return 0
