"""What every `pgvault` command shares: its argument parser, argument types and confirmation."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import TypeVar

from pgvault_assets.cli.console import errors
from pgvault_assets.engine.basics.names import database_option
from pgvault_assets.errors import ConfigError, PgvaultError
from pgvault_assets.fleet import SINGLE, each_database_apart, load_fleet
from pgvault_assets.settings import Settings

T = TypeVar("T")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem and where to look."""

    def error(self, message: str) -> None:  # type: ignore[override]
        errors.print(f"error: {message} (see {self.prog} --help)")
        raise SystemExit(2)


def add_database_option(command: argparse.ArgumentParser) -> None:
    """`--database NAME`: the fleet database a command works on (main.py pins the settings)."""
    command.add_argument(
        "--database",
        dest="fleet_database",
        metavar="NAME",
        default=None,
        help="the database of the fleet file (PGVAULT_FLEET_FILE); required when it has several",
    )


def add_every_database_option(command: argparse.ArgumentParser) -> None:
    """`--database NAME` for a command that, without it, shows every database of the fleet."""
    add_database_option(command)
    command.set_defaults(every_database=True)


def shows_every_database(args: argparse.Namespace, settings: Settings) -> bool:
    """Does this command go over every database itself? Only a command that declares it,
    without --database, on a fleet file of several databases; its handler then gets the
    settings unpinned (a fleet file, `settings.database` None) and pins each database."""
    if not getattr(args, "every_database", False) or args.fleet_database is not None:
        return False
    return len(load_fleet(settings.platform.fleet_file).databases) > 1


def databases_shown(
    args: argparse.Namespace, settings: Settings
) -> tuple[bool, list[tuple[str, Settings | ConfigError]]]:
    """Whether the command shows every database (`shows_every_database`), and the databases it
    shows with their settings: every database of the fleet, each pinned apart (one whose
    settings cannot be made comes with its error), or the one `settings` are pinned to."""
    if shows_every_database(args, settings):
        return True, each_database_apart(settings, os.environ)
    return False, [(settings.database or SINGLE, settings)]


def read_each_shown(
    every: bool,
    databases: list[tuple[str, Settings | ConfigError]],
    read: Callable[[Settings], T],
) -> dict[str, T | PgvaultError]:
    """`read` of each database shown, by name. Shown alone, a database's error is the
    command's (raised); among every database, it is that database's entry, and the rest are
    still read."""
    found: dict[str, T | PgvaultError] = {}
    for name, pinned in databases:
        try:
            if isinstance(pinned, PgvaultError):
                raise pinned
            found[name] = read(pinned)
        except PgvaultError as exc:
            if not every:
                raise
            found[name] = exc
    return found


TARGETS = ("staging", "production")


class DatabaseOrTarget(argparse.Action):
    """`--database` of check-database-integrity: a fleet database's name, or `staging` or
    `production`, the manual's spelling of `--target` (no fleet database may take those names)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, "spelled_target" if values in TARGETS else "fleet_database", values)


def database_and_target(settings: Settings, target: str) -> str:
    """The integrity command's arguments for `target` of the database `settings` are pinned to."""
    return f"{database_option(settings.database)}--target {target}"


class EnvironmentWide(argparse.Action):
    """`--database` on a command that serves every database at once: refused, saying why."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{parser.prog.split()[-1]} is environment-wide (one bucket and one key serve every "
            "database of the fleet): drop --database"
        )


def add_environment_wide(command: argparse.ArgumentParser) -> None:
    command.add_argument("--database", action=EnvironmentWide)


def parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD") from None


def parse_time(text: str) -> datetime:
    """A point in time with its zone (a time without one is ambiguous by hours), in UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a time; use ISO 8601 with a zone, like 2026-11-30T09:15:00Z"
        ) from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} has no time zone; add Z (UTC) or an offset like +01:00"
        )
    return value.astimezone(UTC)


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


MAX_RETRIES = 20  # as BACKUP_MAX_RETRIES allows


def retry_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_RETRIES:
        raise argparse.ArgumentTypeError(
            f"{text[:20]!r} is not a whole number of retries from 0 to {MAX_RETRIES}"
        )
    return value


def confirm(database: str) -> None:
    if not sys.stdin.isatty():
        raise ConfigError(
            "confirmation needs a terminal; pass --skip-confirmation to restore without it"
        )
    errors.print(f"This replaces the database {database!r}. Type its name to confirm: ", end="")
    if input().strip() != database:
        raise ConfigError("confirmation did not match; nothing was restored")
