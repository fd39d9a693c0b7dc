"""The recovery commands: dual-authorized requests, the audit trail, row recovery, compare, drill.

A thin shell like the rest of the CLI: parse, call the engine, print. Every refusal is a
`PgvaultError` whose one line says what to do next.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

from pgvault_assets.cli.args import add_database_option, confirm, parse_date, parse_time
from pgvault_assets.cli.console import console, human_bytes, progress
from pgvault_assets.engine.approvals import audit
from pgvault_assets.engine.approvals import authorization as auth
from pgvault_assets.engine.basics.names import database_option
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import ConfigError
from pgvault_assets.settings import DatabaseUrl, Settings

if TYPE_CHECKING:
    from pgvault_assets.engine.recovery.rows import Origin

EXAMPLES = """\
production restores need a request approved by two approvers:
  pgvault restore-from-backup --date D --target staging --verify
  pgvault check-database-integrity --database staging --date D
  pgvault request-restore --date D --target production --reason "corrupted orders table"
  pgvault approve-restore ID --key ~/.ssh/id_ed25519       (two approvers, each with their key)
  pgvault restore-from-backup --date D --target production --request ID
"""


def register(commands: argparse._SubParsersAction) -> None:
    sub = commands.add_parser(
        "request-restore",
        help="request a production restore, row recovery or rollback (needs two approvals)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_argument("--kind", choices=auth.KINDS, default="restore")
    sub.add_argument("--date", type=parse_date, default=None, help="the backup (not for rollback)")
    sub.add_argument(
        "--time",
        type=parse_time,
        default=None,
        help="restore-to-time, or recover-rows as of a time: the point in time",
    )
    sub.add_argument("--target", choices=("production",), required=True)
    sub.add_argument("--reason", required=True, help="why production must change")
    sub.add_argument("--requester", default=None, help="your name (default: the login name)")
    sub.add_argument("--table", default=None, help="recover-rows: SCHEMA.TABLE")
    sub.add_argument("--where", default=None, help="recover-rows: the approved predicate")
    sub.add_argument(
        "--with-dependents",
        action="store_true",
        help="recover-rows: with the rows referencing them and the parents they need",
    )
    sub.add_argument(
        "--parents-only", action="store_true", help="recover-rows: with the parents they need"
    )
    add_database_option(sub)
    sub.set_defaults(handler=cmd_request_restore)

    sub = commands.add_parser("approve-restore", help="sign a request with your SSH key")
    sub.add_argument("request_id", metavar="ID")
    sub.add_argument("--key", type=Path, required=True, help="your SSH private key")
    add_database_option(sub)
    sub.set_defaults(handler=cmd_approve_restore)

    sub = commands.add_parser("audit", help="show the audit trail: requests, approvals, executions")
    sub.add_argument("--request", default=None, help="only the records of this request")
    sub.add_argument("--json", action="store_true", help="print a JSON array")
    add_database_option(sub)
    sub.set_defaults(handler=cmd_audit)

    sub = commands.add_parser(
        "recover-rows",
        help="put back rows deleted since a backup or a point in time (dry run unless --apply)",
    )
    origin = sub.add_mutually_exclusive_group(required=True)
    origin.add_argument("--date", type=parse_date, help="rows as the backup of this day has them")
    origin.add_argument(
        "--time",
        type=parse_time,
        help="rows as they were at this time, ISO 8601 with a zone (needs pgvault pitr init)",
    )
    sub.add_argument("--table", required=True, help="SCHEMA.TABLE")
    sub.add_argument("--where", default=None, help="SQL predicate on the backup's rows")
    sub.add_argument("--target", choices=("staging", "production"), required=True)
    sub.add_argument(
        "--with-dependents",
        action="store_true",
        help="also the rows referencing them (recursively) and the parents any of them needs",
    )
    sub.add_argument(
        "--parents-only",
        action="store_true",
        help="also the parents they need, not the rows referencing them",
    )
    sub.add_argument("--apply", action="store_true", help="insert the rows (one transaction)")
    sub.add_argument("--request", default=None, help="production --apply: the approved request")
    sub.add_argument("--skip-confirmation", action="store_true")
    add_database_option(sub)
    sub.set_defaults(handler=cmd_recover_rows)

    sub = commands.add_parser(
        "compare",
        help="row counts and checksums per table, owners, grants, settings and roles; "
        "exit 1 if any differ",
    )
    sub.add_argument("--source", choices=("staging", "production"), required=True)
    sub.add_argument("--target", choices=("staging", "production"), required=True)
    sub.add_argument("--tables", nargs="+", default=None, metavar="SCHEMA.TABLE")
    add_database_option(sub)
    sub.set_defaults(handler=cmd_compare)

    sub = commands.add_parser(
        "drill", help="the disaster-recovery drill: restore last month's backup, check, time it"
    )
    sub.add_argument("--rto-hours", type=float, default=None, help="objective (default 4)")
    add_database_option(sub)
    sub.set_defaults(handler=cmd_drill)


def target_to_write(settings: Settings, target: str) -> DatabaseUrl:
    """The database behind `target` that a command is about to write into: staging only
    once no production database is behind it (engine/restore/staging.py)."""
    from pgvault_assets.engine.restore.staging import staging_target

    if target == "staging":
        return staging_target(settings, os.environ)
    return settings.target_url(target)


def cmd_request_restore(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.pitr.archive import base_backup_for
    from pgvault_assets.engine.recovery import operations
    from pgvault_assets.engine.recovery.rows import request_scope

    recovery = settings.recovery
    scope = None
    if args.kind == "recover-rows":
        if not args.table:
            raise ConfigError("a recover-rows request needs --table SCHEMA.TABLE")
        scope = request_scope(
            settings.target_url(args.target),
            args.table,
            args.where,
            with_dependents=args.with_dependents,
            parents_only=args.parents_only,
        )
        if args.time is not None:
            if args.date is not None:
                raise ConfigError("a recover-rows request takes --date or --time, not both")
            scope |= {
                "time": operations.time_key(args.time),
                "base_backup": base_backup_for(settings, args.time).label,
            }
    if args.kind == "restore-to-time":
        if args.time is None:
            raise ConfigError("a restore-to-time request needs --time, like 2026-11-30T09:15:00Z")
        scope = {
            "time": operations.time_key(args.time),
            "base_backup": base_backup_for(settings, args.time).label,
        }
    request = auth.create_request(
        Vault.from_settings(settings),
        kind=args.kind,
        target=args.target,
        target_url=settings.target_url(args.target),
        day=args.date,
        reason=args.reason,
        requester=args.requester or getpass.getuser(),
        ttl=recovery.request_ttl,
        scope=scope,
    )
    console.print(request.id)
    console.print(
        f"requested: {request.summary()}; expires {request.expires_at:%Y-%m-%d %H:%M} UTC. "
        f"Two approvers run: pgvault approve-restore {request.id} "
        f"{database_option(settings.database)}--key PATH"
    )
    return 0


def cmd_approve_restore(args: argparse.Namespace, settings: Settings) -> int:
    approvers = settings.recovery.require_approvers_file()
    vault = Vault.from_settings(settings)
    request = auth.read_request(vault, args.request_id)
    console.print(f"request {request.id} by {request.requester}: {request.summary()}")
    console.print(f"reason: {request.reason}")
    approval = auth.approve_request(vault, request.id, args.key, approvers)
    count = len(auth.valid_approvals(vault, request, approvers))
    console.print(
        f"approved by {approval.principal} ({approval.fingerprint}); "
        f"{count} of {auth.REQUIRED_APPROVERS} distinct approvals"
    )
    return 0


def _describe(record: audit.AuditRecord) -> tuple[str, str]:
    body = record.body
    if record.record == "request":
        request = body.get("request", {})
        return str(request.get("id", "")), (
            f"{request.get('kind')} {request.get('date') or ''} into {request.get('database')} "
            f"by {request.get('requester')}: {request.get('reason')}"
        )
    by = f" by {body['actor']}" if "actor" in body else ""
    outcome = f"; FAILED: {body.get('detail')}" if body.get("succeeded") is False else ""
    if record.record in (audit.STAGING_RESTORE, audit.INTEGRITY_CHECK):
        verdict = (
            ""
            if record.record == audit.STAGING_RESTORE
            else (" passed" if body.get("passed") else f" FAILED {body.get('failed_checks')}")
        )
        return (
            "",
            f"{body.get('date')} ({str(body.get('sha256'))[:12]}…) in {body.get('database')}"
            f"{verdict}{by}{outcome}",
        )
    if record.record == audit.STAGING_ROLLBACK:
        swapped = f" back to {body['swapped_in']}" if "swapped_in" in body else ""
        return "", f"{body.get('database')}{swapped}{by}{outcome}"
    if record.record == audit.ROW_RECOVERY:
        inserted = f"{body['inserted']} rows of " if "inserted" in body else "rows of "
        origin = f"as of {body['time']}" if "time" in body else f"from {body.get('date')}"
        return "", (
            f"{inserted}{body.get('table')} {origin} into {body.get('database')}{by}{outcome}"
        )
    if record.record == audit.STAGING_RESTORE_TO_TIME:
        return "", (
            f"{body.get('database')} recovered to {body.get('time')} from base backup "
            f"{body.get('base_backup')}{by}{outcome}"
        )
    if record.record == "approval":
        return str(body.get("request_id")), f"{body.get('principal')} ({body.get('fingerprint')})"
    if record.record == "execution":
        return str(
            body.get("request_id")
        ), f"{body.get('kind')} approved by {', '.join(body.get('approvers', []))}"
    if record.record == "execution-result":
        return str(body.get("request_id")), (
            f"{'succeeded' if body.get('succeeded') else 'FAILED'}: {body.get('detail')}"
        )
    return "", record.key


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    vault = Vault.from_settings(settings)
    records = audit.audit_records(vault)
    if args.request:
        records = [r for r in records if _describe(r)[0] == args.request]
    if args.json:
        print(json.dumps([r.body for r in records], indent=2, sort_keys=True))
        return 0
    if not records:
        console.print(f"the audit trail of {settings.environment} is empty")
        return 0
    table = Table(title=f"audit trail of {settings.environment}")
    for column in ("recorded (UTC)", "record", "request", "detail"):
        table.add_column(column)
    for record in records:
        request_id, detail = _describe(record)
        table.add_row(f"{record.recorded_at:%Y-%m-%d %H:%M:%S}", record.record, request_id, detail)
    console.print(table)
    return 0


def _origin(args: argparse.Namespace, settings: Settings) -> Origin:
    """The backup of `--date`, or `--time` in the stanza of the database's server."""
    if args.time is None:
        return args.date
    from pgvault_assets.engine.pitr.archive import tool_for
    from pgvault_assets.engine.recovery.rows import PointInTime

    return PointInTime(tool_for(settings), settings.require_database(), args.time)


def cmd_recover_rows(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.recovery import operations, rows

    vault = Vault.from_settings(settings)
    url = target_to_write(settings, args.target)
    scratch_server = settings.staging_database_url or url
    origin = _origin(args, settings)
    if args.apply and args.target == "production":
        if not args.request:
            raise ConfigError(
                "recovering rows into production needs an approved request: "
                "pgvault request-restore --kind recover-rows ..., then --request ID"
            )
        request = auth.read_request(vault, args.request)
        wanted = rows.request_scope(
            url,
            args.table,
            args.where,
            with_dependents=args.with_dependents,
            parents_only=args.parents_only,
        )
        if args.time is not None:
            wanted["time"] = operations.time_key(args.time)
        # The base backup is the engine's to check: it says so when a newer one replaced it.
        approved = {k: v for k, v in request.scope.items() if k != "base_backup"}
        if approved != wanted or request.date != args.date:
            raise ConfigError(
                f"request {request.id} approved {request.summary()} with {request.scope}; "
                "run exactly what was approved, or request again"
            )
        result = rows.recover_rows_production(
            vault,
            args.request,
            url,
            settings.recovery.require_approvers_file(),
            scratch_server=scratch_server,
            point_in_time=origin if isinstance(origin, rows.PointInTime) else None,
            confirm=None if args.skip_confirmation else confirm,
        )
    elif args.request:
        raise ConfigError("--request is only for --apply on production; drop it")
    elif args.apply:
        result = rows.recover_rows_staging(
            vault,
            origin,
            url,
            args.table,
            actor=audit.operator(),
            where=args.where,
            with_dependents=args.with_dependents,
            parents_only=args.parents_only,
            scratch_server=scratch_server,
        )
    else:
        result = rows.recover_rows(
            vault,
            origin,
            url,
            args.table,
            where=args.where,
            with_dependents=args.with_dependents,
            parents_only=args.parents_only,
            scratch_server=scratch_server,
        )
    comment = "" if args.apply else "-- "  # a dry run's output stays runnable SQL
    for name in result.abandoned_scratch:
        console.print(f"{comment}dropped {name}, the scratch database an interrupted run left")
    if result.time is not None:
        console.print(
            f"{comment}rows as of {operations.time_key(result.time)}: recovered from base backup "
            f"{result.base_backup}, recovery stopped at {result.stopped_at}",
            markup=False,
        )
    if not result.statements:
        present = (
            f"the 1 matching row is present in {url.dbname}"
            if result.matched == 1
            else f"all {result.matched} matching rows are present in {url.dbname}"
        )
        console.print(f"{comment}{present}; nothing to recover")
        return 0
    per_table = ", ".join(f"{name}: {count}" for name, count in result.tables)
    if result.inserted is None:
        print(result.script())
        console.print(
            f"-- {_rows_text(result.total)} missing from {url.dbname} ({per_table}); "
            "nothing was changed, add --apply to insert them"
        )
    else:
        console.print(
            f"inserted {result.inserted} of {_rows_text(result.total)} into {url.dbname} "
            f"({per_table}) in one transaction"
        )
    return 0


def _rows_text(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.postgres import shape
    from pgvault_assets.engine.postgres.compare import compare_databases

    if args.source == args.target:
        raise ConfigError("--source and --target are the same database; compare two")
    source, target = settings.target_url(args.source), settings.target_url(args.target)
    comparison = compare_databases(source, target, args.tables)
    table = Table(title=f"{args.source} ({source.dbname}) vs {args.target} ({target.dbname})")
    for column in ("table", f"{args.source} rows", f"{args.target} rows", "content"):
        table.add_column(column)
    for item in comparison.tables:
        table.add_row(
            item.table,
            str(item.source.rows) if item.source else "absent",
            str(item.target.rows) if item.target else "absent",
            "[red]DIFFERS[/]" if item.differs else "[green]same[/]",
        )
    console.print(table)
    if comparison.differing:
        names = ", ".join(t.table for t in comparison.differing)
        console.print(f"{len(comparison.differing)} tables differ: {names}")
    for difference in comparison.sections:
        said = "differ" if shape.matters(difference) else "differ (a note, not a failure)"
        console.print(
            escape(f"{difference.section} {said}: ")
            + escape(difference.describe(args.source, args.target))
        )
    if not comparison.equal:
        return 1
    console.print(
        f"all {len(comparison.tables)} tables are equal"
        + ("" if args.tables else ", and so are owners, grants, settings and roles")
    )
    return 0


def cmd_drill(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.recovery.drill import run_configured_drill, store_report

    vault = Vault.from_settings(settings)
    report = run_configured_drill(vault, settings, rto_hours=args.rto_hours)
    key = store_report(vault, report)
    console.print(report.to_markdown())
    console.print(
        f"report stored as {key}; drill database "
        f"{human_bytes(report.drill_database_bytes or 0)} was dropped"
    )
    return 0 if report.passed else 1


def restore_production_command(args: argparse.Namespace, settings: Settings) -> int:
    """`restore-from-backup --target production`: only under a dual-authorized request."""
    from pgvault_assets.engine.recovery import operations

    if not args.request:
        raise ConfigError(
            "restoring to production needs an approved request (--skip-confirmation does not bypass it): "
            "pgvault request-restore --date D --target production --reason TEXT, two approvals, then --request ID"
        )
    vault = Vault.from_settings(settings)
    request = auth.read_request(vault, args.request)
    if request.date != args.date:
        raise ConfigError(
            f"request {request.id} approved the {request.date} backup, not {args.date}; nothing was restored"
        )
    url = settings.target_url("production")
    with progress(f"restoring {args.date} to production") as advance:
        result = operations.restore_production(
            vault,
            args.request,
            url,
            settings.recovery.require_approvers_file(),
            full_verify=args.verify,
            progress=advance,
            confirm=None if args.skip_confirmation else confirm,
        )
    console.print(
        f"restored backup {args.date} into {url.dbname} on production under request {request.id}"
    )
    if result.previous:
        console.print(
            f"the replaced database is {kept_as(result.previous, settings)}; to undo: "
            f"{production_rollback_hint(settings)}"
        )
    return 0


def production_rollback_hint(settings: Settings) -> str:
    """How production's replaced database comes back: a rollback request of the same database."""
    pinned = database_option(settings.database)
    return (
        f"pgvault request-restore {pinned}--kind rollback --target production --reason TEXT, "
        f"two approvals, then pgvault rollback-restore {pinned}--target production --request ID"
    )


def kept_as(name: str, settings: Settings) -> str:
    """`kept as <name> until <time> UTC`: how long the way back stays, as the maintenance
    will count it (from the time in the name)."""
    from pgvault_assets.engine.recovery.kept_databases import kept_until

    until = kept_until(name, settings.restore_keep_previous_hours)
    when = f" until {until:%Y-%m-%d %H:%M} UTC (RESTORE_KEEP_PREVIOUS_HOURS)" if until else ""
    return f"kept as {name}{when}"


def rollback_production_command(args: argparse.Namespace, settings: Settings) -> int:
    """`rollback-restore --target production`: only under a dual-authorized `rollback` request."""
    from pgvault_assets.engine.recovery import operations

    if not args.request:
        raise ConfigError(
            "rolling back production needs an approved request: "
            "pgvault request-restore --kind rollback --target production --reason TEXT, then --request ID"
        )
    url = settings.target_url("production")
    restored, kept = operations.rollback_production(
        Vault.from_settings(settings),
        args.request,
        url,
        settings.recovery.require_approvers_file(),
    )
    console.print(
        f"{url.dbname} is back to {restored}; the database it replaced is {kept_as(kept, settings)}"
    )
    return 0
