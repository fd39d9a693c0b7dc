"""The backup commands: list, verify, restore and roll back, integrity checks, the demo database.

Listing reads the store only. The commands that reach PostgreSQL or decrypt import the engine
modules that do so when they run (main.py says why).
"""

from __future__ import annotations

import argparse
import json

from rich.markup import escape
from rich.table import Table

from pgvault_assets.cli.args import (
    TARGETS,
    DatabaseOrTarget,
    add_database_option,
    add_every_database_option,
    confirm,
    database_and_target,
    databases_shown,
    parse_date,
    positive_int,
    read_each_shown,
)
from pgvault_assets.cli.console import ago, console, errors, human_bytes, on_target, progress
from pgvault_assets.cli.recovery import (
    kept_as,
    restore_production_command,
    rollback_production_command,
    target_to_write,
)
from pgvault_assets.engine.approvals.audit import operator, record_integrity_check
from pgvault_assets.engine.basics import names
from pgvault_assets.engine.basics.clock import utcnow
from pgvault_assets.engine.monitoring.catalog import backup_rows
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import ConfigError, PgvaultError
from pgvault_assets.redact import redact
from pgvault_assets.settings import Settings


def register(commands: argparse._SubParsersAction) -> None:
    sub = commands.add_parser("list-backups", help="list complete backups, newest first")
    sub.add_argument("--days", type=positive_int, default=None, help="only the last N days")
    sub.add_argument("--json", action="store_true", help="print a JSON array")
    sub.add_argument(
        "--versions",
        action="store_true",
        help="also the backups a re-run of their date replaced, kept until retention",
    )
    add_every_database_option(sub)
    sub.set_defaults(handler=_cmd_list_backups)

    sub = commands.add_parser(
        "verify-backup", help="checksum and authenticated decrypt, nothing restored"
    )
    sub.add_argument("--date", type=parse_date, required=True)
    add_database_option(sub)
    sub.set_defaults(handler=_cmd_verify_backup)

    sub = commands.add_parser(
        "restore-from-backup", help="restore a backup into staging (or production)"
    )
    sub.add_argument("--date", type=parse_date, required=True)
    sub.add_argument("--target", choices=("staging", "production"), required=True)
    sub.add_argument(
        "--verify",
        action="store_true",
        help="every restore now verifies the whole object in its single read; accepted for scripts",
    )
    sub.add_argument(
        "--skip-confirmation", action="store_true", help="do not ask to type the database name"
    )
    sub.add_argument("--request", default=None, help="production: the dual-approved request id")
    sub.add_argument(
        "--version",
        default=None,
        metavar="VERSION_ID",
        help="staging: a replaced backup of the date (pgvault list-backups --versions)",
    )
    add_database_option(sub)
    sub.set_defaults(handler=_cmd_restore)

    sub = commands.add_parser(
        "rollback-restore", help="swap back the database the last restore replaced"
    )
    sub.add_argument("--target", choices=("staging", "production"), required=True)
    sub.add_argument("--request", default=None, help="production: the dual-approved request id")
    add_database_option(sub)
    sub.set_defaults(handler=_cmd_rollback)

    sub = commands.add_parser(
        "check-database-integrity",
        help="row counts, owners, grants, settings, roles, sequences, foreign keys, indexes",
    )
    sub.add_argument("--target", choices=TARGETS, default=None, help="the database to check")
    sub.add_argument(
        "--database",
        action=DatabaseOrTarget,
        metavar="NAME",
        help="the fleet database (required when the fleet file has several); "
        "--database staging|production is --target's older spelling",
    )
    sub.add_argument(
        "--date", type=parse_date, default=None, help="the backup to compare with (default: latest)"
    )
    sub.set_defaults(handler=_cmd_integrity, fleet_database=None, spelled_target=None)

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


def _recoverable_window(settings: Settings) -> str | None:
    """The times point-in-time recovery of the database's server can reach, where it is set
    up (None where it is not)."""
    if not names.pitr_stanza(settings).config_file.exists():
        return None
    from pgvault_assets.engine.pitr.archive import tool_for
    from pgvault_assets.engine.pitr.window import read_window

    try:
        window = read_window(tool_for(settings))
    except PgvaultError as exc:
        return f"unknown ({exc})"
    if window.earliest is None or window.latest is None:
        return "none yet (no base backup)"
    gaps = f", {len(window.gaps)} gap(s): pgvault pitr status" if window.gaps else ""
    return (
        f"{window.earliest:%Y-%m-%d %H:%M:%S}Z .. "
        f"{window.latest:%Y-%m-%d %H:%M:%S}Z ({len(window.backups)} base backups{gaps})"
    )


def _print_recoverable_windows(
    databases: list[tuple[str, Settings | ConfigError]], *, every: bool
) -> None:
    """After the dumps, each server's point-in-time window once: a window is the server's and
    every database on it shares it. Every database's listing names the server and the
    databases shown that recover from it; one database's, as the manual shows it."""
    servers: dict[str | None, list[tuple[str, Settings]]] = {}
    for name, pinned in databases:
        if isinstance(pinned, Settings):
            servers.setdefault(pinned.server, []).append((name, pinned))
    for server, shown in servers.items():
        window = _recoverable_window(shown[0][1])
        if window is None:
            continue
        whose = f" of server {server} ({', '.join(name for name, _ in shown)})" if every else ""
        console.print(f"point-in-time window{whose}: {window}", markup=False)


def _cmd_list_backups(args: argparse.Namespace, settings: Settings) -> int:
    """The backups of the databases shown: every database's with a `database` column (and
    JSON field) saying whose, a database that cannot be listed one line on stderr while the
    others are still shown; one database's as the manual shows them, its error the command's."""
    every, databases = databases_shown(args, settings)
    now = utcnow()
    listed = read_each_shown(
        every,
        databases,
        lambda pinned: backup_rows(pinned, days=args.days, now=now, versions=args.versions),
    )
    rows: list[dict] = []
    failed = 0
    for name, found in listed.items():
        if isinstance(found, PgvaultError):
            failed += 1
            errors.print(f"error: database {name}: {redact(str(found))}", markup=False)
            continue
        rows += [{"database": name, **row} for row in found] if every else found
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        if every:
            title = f"backups of every database of {settings.environment}"
            console.print(_backups_table(title, rows, whose=True, versions=args.versions))
        elif rows:
            title = f"backups of {settings.environment}"
            console.print(_backups_table(title, rows, versions=args.versions))
        else:
            console.print(f"no backups in {settings.environment} yet; run: pgvault backup")
        _print_recoverable_windows(databases, every=every)
    return 1 if failed else 0


def _backups_table(
    title: str, rows: list[dict], *, whose: bool = False, versions: bool = False
) -> Table:
    """The backups as rows of a table; with `whose`, a `database` column first; with
    `versions`, a `version` column last (a replaced one marked so)."""
    table = Table(title=title)
    columns = ("date", "tier", "size", "taken", "duration", "sha256", "restore-verified")
    for column in (("database",) if whose else ()) + columns + (("version",) if versions else ()):
        table.add_column(column)
    for row in rows:
        version = row.get("version_id") or "-"
        table.add_row(
            *((row["database"],) if whose else ()),
            row["date"],
            row["tier"],
            human_bytes(row["size_bytes"]),
            ago(row["age_hours"]),
            f"{row['duration_seconds']:.1f} s",
            row["sha256"][:12],
            row["restore_verified_at"] or "-",
            *((version if row["current"] else f"{version} (replaced)",) if versions else ()),
        )
    return table


def _cmd_verify_backup(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.restore.verify import verify_backup

    vault = Vault.from_settings(settings)
    with progress(f"verifying {args.date}") as advance:
        result = verify_backup(vault, args.date, full=True, progress=advance)
    console.print(
        f"backup {args.date} is intact: SHA-256 {result.sha256[:16]}… matches its manifest, "
        f"{human_bytes(result.size_bytes)} decrypted and authenticated to {human_bytes(result.dump_size_bytes or 0)} of SQL"
    )
    return 0


def _cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    if args.target == "production":
        if args.version is not None:
            raise ConfigError(
                "--version restores a replaced backup to staging only: a production request "
                "approves the backup its date holds now; nothing was restored"
            )
        return restore_production_command(args, settings)
    from pgvault_assets.engine.recovery.operations import restore_staging

    url = target_to_write(settings, args.target)
    if not args.skip_confirmation and args.target != "staging":
        confirm(url.dbname)
    vault = Vault.from_settings(settings)
    with progress(f"restoring {args.date} to {args.target}") as advance:
        result = restore_staging(
            vault,
            args.date,
            url,
            actor=operator(),
            full_verify=args.verify,
            progress=advance,
            version=args.version,
        )
    seconds = sum(result.stage_seconds.values())
    which = "" if args.version is None else f" version {args.version}"
    console.print(
        f"restored backup {args.date}{which} ({result.manifest.row_total} rows in {len(result.manifest.table_rows)} tables) "
        f"into {on_target(url.dbname, args.target)} in {seconds:.1f} s"
    )
    if result.previous:
        console.print(
            f"the replaced database is {kept_as(result.previous, settings)}; "
            f"to undo: pgvault rollback-restore --target {args.target}"
        )
    console.print(
        f"next: pgvault check-database-integrity {database_and_target(settings, args.target)} "
        f"--date {args.date}"
    )
    return 0


def _cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    if args.target == "production":
        return rollback_production_command(args, settings)
    from pgvault_assets.engine.recovery.operations import rollback_staging

    url = target_to_write(settings, args.target)
    restored, kept = rollback_staging(Vault.from_settings(settings), url, actor=operator())
    console.print(
        f"{url.dbname} is back to {restored}; the database it replaced is {kept_as(kept, settings)}"
    )
    return 0


def _integrity_target(args: argparse.Namespace) -> str:
    """`--target`, or the manual's `--database staging|production`; both only if they agree."""
    if args.target and args.spelled_target and args.target != args.spelled_target:
        raise ConfigError(
            f"--database {args.spelled_target} and --target {args.target} name different "
            "targets; pass one --target"
        )
    target = args.target or args.spelled_target
    if target is None:
        raise ConfigError("check-database-integrity needs --target staging or --target production")
    return target


def _cmd_integrity(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.postgres.integrity import check_database_integrity
    from pgvault_assets.engine.postgres.server_context import read_context

    target = _integrity_target(args)
    url = target_to_write(settings, target)
    vault = Vault.from_settings(settings)
    if args.date:
        manifest = vault.read_manifest(args.date)
    else:
        manifests = vault.list_manifests()
        manifest = manifests[-1] if manifests else None
    context = read_context(vault, manifest) if manifest is not None else None
    results = check_database_integrity(
        url, manifest, context=context, install_amcheck=target == "staging"
    )
    if target == "staging" and manifest is not None:
        failing = [r.name for r in results if not r.passed]
        record_integrity_check(
            vault, manifest, url.dbname, passed=not failing, failed_checks=failing
        )
    table = Table(title=f"integrity of {url.dbname} ({target})")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    for result in results:
        verdict = (
            "skipped" if result.skipped else ("[green]pass[/]" if result.passed else "[red]FAIL[/]")
        )
        table.add_row(result.name, verdict, escape(result.detail))
    console.print(table)
    failed = [r.name for r in results if not r.passed]
    if failed:
        errors.print(
            f"error: integrity check failed: {', '.join(failed)}; do not promote this database"
        )
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.postgres.demo import create_demo_database

    url, created = create_demo_database(args.server, args.name)
    console.print(f"{'created' if created else 'found'} demo database {url}")
    return 0
