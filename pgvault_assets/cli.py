"""The `pgvault` command: parse, call the engine, print.

Every failure an operator can cause or meet ends as one line on stderr and a non-zero exit
status; a traceback only with --debug.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime

from rich.table import Table

from pgvault_assets.console import console, errors, human_bytes, print_warnings, progress
from pgvault_assets.errors import ConfigError, PgvaultError
from pgvault_assets.redact import redact
from pgvault_assets.settings import Settings, load_settings

EXAMPLES = """\
examples:
  pgvault backup                                  back up yesterday (UTC), the latest complete day
  pgvault list-backups --days 30
  pgvault verify-backup --date 2025-11-06         checksum and full decrypt, nothing restored
  pgvault restore-from-backup --date 2025-11-06 --target staging --verify
  pgvault check-database-integrity --database staging
  pgvault rollback-restore --target staging       put back the database a restore replaced
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem and where to look."""

    def error(self, message: str) -> None:  # type: ignore[override]
        errors.print(f"error: {message} (see {self.prog} --help)")
        raise SystemExit(2)


def parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD") from None


MAX_DAYS = 36500  # a hundred years: any more is a typo, and overflows a date


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_DAYS:
        raise argparse.ArgumentTypeError(
            f"{text[:20]!r} is not a whole number of at least 1 and at most {MAX_DAYS}"
        )
    return value


def _cmd_list_backups(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.catalog import backup_rows

    rows = backup_rows(settings, days=args.days, now=datetime.now(UTC))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        console.print(f"no backups in {settings.environment} yet; run: pgvault backup")
        return 0
    table = Table(title=f"backups of {settings.environment}")
    for column in ("date", "tier", "size", "age", "duration", "sha256", "restore-verified"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["date"],
            row["tier"],
            human_bytes(row["size_bytes"]),
            f"{row['age_hours'] / 24:.1f} d",
            f"{row['duration_seconds']:.1f} s",
            row["sha256"][:12],
            row["restore_verified_at"] or "-",
        )
    console.print(table)
    return 0


def _cmd_verify_backup(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.restore import verify_backup
    from pgvault_assets.engine.vault import Vault

    vault = Vault.from_settings(settings)
    with progress(f"verifying {args.date}") as advance:
        result = verify_backup(vault, args.date, full=True, progress=advance)
    console.print(
        f"backup {args.date} is intact: SHA-256 {result.sha256[:16]}… matches its manifest, "
        f"{human_bytes(result.size_bytes)} decrypted and authenticated to {human_bytes(result.dump_size_bytes or 0)} of SQL"
    )
    return 0


def _confirm(database: str) -> None:
    if not sys.stdin.isatty():
        raise ConfigError(
            "confirmation needs a terminal; pass --skip-confirmation to restore without it"
        )
    errors.print(f"This replaces the database {database!r}. Type its name to confirm: ", end="")
    if input().strip() != database:
        raise ConfigError("confirmation did not match; nothing was restored")


def _cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.audit import operator, restore_staging
    from pgvault_assets.engine.vault import Vault

    if args.target == "production":
        from pgvault_assets.cli_recovery import restore_production_command

        return restore_production_command(args, settings)
    url = settings.target_url(args.target)
    if not args.skip_confirmation and args.target != "staging":
        _confirm(url.dbname)
    vault = Vault.from_settings(settings)
    with progress(f"restoring {args.date} to {args.target}") as advance:
        result = restore_staging(
            vault, args.date, url, actor=operator(), full_verify=args.verify, progress=advance
        )
    seconds = sum(result.stage_seconds.values())
    console.print(
        f"restored backup {args.date} ({result.manifest.row_total} rows in {len(result.manifest.table_rows)} tables) "
        f"into {url.dbname} on {args.target} in {seconds:.1f} s"
    )
    if result.previous:
        console.print(
            f"the replaced database is kept as {result.previous}; to undo: pgvault rollback-restore --target {args.target}"
        )
    console.print(
        f"next: pgvault check-database-integrity --database {args.target} --date {args.date}"
    )
    return 0


def _cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.audit import operator, rollback_staging
    from pgvault_assets.engine.vault import Vault

    if args.target == "production":
        from pgvault_assets.cli_recovery import rollback_production_command

        return rollback_production_command(args, settings)
    url = settings.target_url(args.target)
    restored, kept = rollback_staging(Vault.from_settings(settings), url, actor=operator())
    console.print(f"{url.dbname} is back to {restored}; the database it replaced is kept as {kept}")
    return 0


def _cmd_integrity(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.integrity import check_database_integrity
    from pgvault_assets.engine.vault import Vault

    url = settings.target_url(args.database)
    vault = Vault.from_settings(settings)
    if args.date:
        manifest = vault.read_manifest(args.date)
    else:
        manifests = vault.list_manifests()
        manifest = manifests[-1] if manifests else None
    results = check_database_integrity(url, manifest, install_amcheck=args.database == "staging")
    if args.database == "staging" and manifest is not None:
        from pgvault_assets.engine.audit import record_integrity_check

        failing = [r.name for r in results if not r.passed]
        record_integrity_check(
            vault, manifest, url.dbname, passed=not failing, failed_checks=failing
        )
    table = Table(title=f"integrity of {url.dbname} ({args.database})")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for result in results:
        verdict = (
            "skipped" if result.skipped else ("[green]pass[/]" if result.passed else "[red]FAIL[/]")
        )
        table.add_row(result.name, verdict, result.detail)
    console.print(table)
    failed = [r.name for r in results if not r.passed]
    if failed:
        errors.print(
            f"error: integrity check failed: {', '.join(failed)}; do not promote this database"
        )
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.demo import create_demo_database

    url, created = create_demo_database(args.server, args.name)
    console.print(f"{'created' if created else 'found'} demo database {url}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pgvault",
        description="Backup and recovery for PostgreSQL: dump, compress, encrypt, store, verify, restore.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser, required=True
    )

    from pgvault_assets import cli_deploy, cli_platform, cli_recovery

    cli_platform.register(commands)
    cli_recovery.register(commands)
    cli_deploy.register(commands)

    sub = commands.add_parser("list-backups", help="list complete backups, newest first")
    sub.add_argument("--days", type=positive_int, default=None, help="only the last N days")
    sub.add_argument("--json", action="store_true", help="print a JSON array")
    sub.set_defaults(handler=_cmd_list_backups)

    sub = commands.add_parser(
        "verify-backup", help="checksum and authenticated decrypt, nothing restored"
    )
    sub.add_argument("--date", type=parse_date, required=True)
    sub.set_defaults(handler=_cmd_verify_backup)

    sub = commands.add_parser(
        "restore-from-backup", help="restore a backup into staging (or production)"
    )
    sub.add_argument("--date", type=parse_date, required=True)
    sub.add_argument("--target", choices=("staging", "production"), required=True)
    sub.add_argument(
        "--verify", action="store_true", help="fully decrypt and authenticate before restoring"
    )
    sub.add_argument(
        "--skip-confirmation", action="store_true", help="do not ask to type the database name"
    )
    sub.add_argument("--request", default=None, help="production: the dual-approved request id")
    sub.set_defaults(handler=_cmd_restore)

    sub = commands.add_parser(
        "rollback-restore", help="swap back the database the last restore replaced"
    )
    sub.add_argument("--target", choices=("staging", "production"), required=True)
    sub.add_argument("--request", default=None, help="production: the dual-approved request id")
    sub.set_defaults(handler=_cmd_rollback)

    sub = commands.add_parser(
        "check-database-integrity", help="row counts, sequences, foreign keys, indexes"
    )
    sub.add_argument("--database", choices=("staging", "production"), required=True)
    sub.add_argument(
        "--date", type=parse_date, default=None, help="the backup to compare with (default: latest)"
    )
    sub.set_defaults(handler=_cmd_integrity)

    sub = commands.add_parser(
        "demo-database", help="create the small demo database the quickstart backs up"
    )
    sub.add_argument(
        "--server",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="maintenance URL of the server",
    )
    sub.add_argument("--name", default="pgvault_demo")
    sub.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    print_warnings()
    try:
        settings = load_settings()
        return int(args.handler(args, settings))
    except PgvaultError as exc:
        if args.debug:
            raise
        errors.print(f"error: {redact(str(exc))}")
        return exc.exit_code
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
