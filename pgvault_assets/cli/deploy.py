"""The deployment commands: `init-storage` sets up the AWS side, `doctor` checks everything.

A thin shell like the rest of the CLI: parse, call the engine, print. Each command imports
boto3's and the doctor's modules (Dagster's, for the instance check) when it runs (main.py
says why).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from pgvault_assets.cli.args import add_database_option, add_environment_wide
from pgvault_assets.cli.console import console, errors
from pgvault_assets.engine.vault.keys import LocalKeyProvider
from pgvault_assets.errors import ConfigError
from pgvault_assets.settings import Settings

ENVIRONMENT_WIDE = (
    "Environment-wide: one bucket and one key serve every database of a fleet, so it takes "
    "no --database."
)
_VERDICT = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}


def register(commands: argparse._SubParsersAction) -> None:
    sub = commands.add_parser(
        "init-storage",
        help="create or check the S3 bucket and KMS key, and print the IAM policy",
        description=(
            "Create what is missing, idempotently: the KMS key with its alias and automatic "
            "rotation; the bucket with versioning, public access blocked and default SSE-KMS. "
            "Run it with administrator rights; pgvault itself needs only the printed policy. "
            f"{ENVIRONMENT_WIDE}"
        ),
    )
    add_environment_wide(sub)
    sub.add_argument(
        "--object-lock",
        action="store_true",
        help="enable S3 Object Lock, so backups cannot be deleted before their tier expires",
    )
    sub.set_defaults(handler=init_storage_command)

    sub = commands.add_parser(
        "key-fingerprint",
        help="print the local key's fingerprint; with --file, check a copy of it against it",
        description=f"Print the local key's fingerprint. {ENVIRONMENT_WIDE}",
    )
    add_environment_wide(sub)
    sub.add_argument(
        "--file", type=Path, default=None, help="a copy of the key file, e.g. from your safe"
    )
    sub.set_defaults(handler=key_fingerprint_command)

    sub = commands.add_parser(
        "doctor", help="check the deployment end to end; exit 1 when something is wrong"
    )
    add_database_option(sub)
    sub.set_defaults(handler=doctor_command)


def init_storage_command(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.engine.storage.storage_setup import init_storage

    setup = init_storage(settings, object_lock=args.object_lock)
    table = Table(title=f"storage for {settings.environment}")
    for column in ("what", "result", "detail"):
        table.add_column(column)
    for step in setup.steps:
        result = f"[green]{step.outcome}[/]" if step.changed else step.outcome
        table.add_row(step.thing, result, escape(step.detail))
    console.print(table)
    changed = [step.thing for step in setup.steps if step.changed]
    console.print(
        f"created or changed: {', '.join(changed)}" if changed else "everything was already set up"
    )
    if not settings.uses_s3:
        console.print(
            f"to use it, set BACKUP_S3_BUCKET={setup.bucket} BACKUP_KMS_KEY_ID={setup.key_id}"
        )
    console.print("IAM policy for the role that runs pgvault (least privilege):")
    print(json.dumps(setup.policy, indent=2))
    return 0


def doctor_command(args: argparse.Namespace, settings: Settings) -> int:
    from pgvault_assets.defs.instance_storage import instance_storage_check
    from pgvault_assets.engine.monitoring.doctor import failed, run_checks

    checks = run_checks(settings, today=datetime.now(UTC).date())
    checks.append(instance_storage_check())
    table = Table(title=f"pgvault doctor: {settings.environment}")
    for column in ("check", "result", "detail"):
        table.add_column(column)
    for check in checks:
        table.add_row(
            check.name, _VERDICT.get(check.status.value, check.status.value), escape(check.detail)
        )
    console.print(table)
    wrong = failed(checks)
    if wrong:
        errors.print(
            f"error: {len(wrong)} check{'s' if len(wrong) != 1 else ''} failed: {', '.join(check.name for check in wrong)}; "
            "fix them as their detail says"
        )
        return 1
    console.print("everything pgvault needs is in place")
    return 0


def key_fingerprint_command(args: argparse.Namespace, settings: Settings) -> int:
    """A copy of the key is worth only what it decrypts: compare fingerprints (a hash that
    reveals nothing of the key) before the day the copy is needed."""
    if settings.uses_s3:
        raise ConfigError(
            f"backups are encrypted under the KMS key {settings.kms_key_id}, not a key file: "
            "there is no copy to check"
        )
    live = LocalKeyProvider(settings.local_key_file)
    if not live.path.exists():
        raise ConfigError(
            f"there is no key file at {live.path} yet; the first backup creates it "
            "(or point BACKUP_LOCAL_KEY_FILE at yours)"
        )
    console.print(f"{live.path}: {live.fingerprint()}")
    if args.file is None:
        return 0
    copy = LocalKeyProvider(args.file.expanduser().absolute())
    if not copy.path.is_file():
        raise ConfigError(f"there is no file at {copy.path}; give --file the copy to check")
    console.print(f"{copy.path}: {copy.fingerprint()}")
    if copy.fingerprint() != live.fingerprint():
        errors.print(f"error: {copy.path} is not a copy of {live.path}; it would decrypt nothing")
        return 1
    console.print("the copy matches the live key")
    return 0
