"""`pgvault fleet`: the fleet file's databases, and their servers' pool limits on the instance.

The limits are set explicitly, one per server: with only `concurrency.pools.default_limit`,
the first dequeue pass of an instance that has not seen a pool yet ignores the limit.
"""

from __future__ import annotations

import argparse

from rich.table import Table

from pgvault_assets.cli.args import Parser
from pgvault_assets.cli.console import console
from pgvault_assets.cli.platform import open_instance
from pgvault_assets.errors import ConfigError
from pgvault_assets.fleet import Fleet, load_fleet, pool_name
from pgvault_assets.settings import Settings


def register(commands: argparse._SubParsersAction) -> None:
    group = commands.add_parser("fleet", help="the databases of the fleet file and their pools")
    verbs = group.add_subparsers(
        dest="fleet_command", metavar="VERB", parser_class=Parser, required=True
    )
    sub = verbs.add_parser("show", help="list the fleet's databases, servers and pools")
    sub.set_defaults(handler=show_command)
    sub = verbs.add_parser(
        "apply-limits",
        help="set each server's pool limit on the Dagster instance (before the first tick)",
    )
    sub.set_defaults(handler=apply_limits_command)


def _fleet_file(settings: Settings) -> Fleet:
    fleet = load_fleet(settings.platform.fleet_file)
    if not fleet.from_file:
        raise ConfigError(
            "PGVAULT_FLEET_FILE is not set; without a fleet file the one backup pool "
            "(pgvault_backup) takes dagster.yaml's default_limit"
        )
    return fleet


def show_command(args: argparse.Namespace, settings: Settings) -> int:
    fleet = _fleet_file(settings)
    table = Table(title=f"fleet of {settings.environment} ({fleet.source})")
    for column in ("database", "dbname", "server", "pool", "limit", "hour (UTC)"):
        table.add_column(column)
    for database in fleet.databases:
        server = fleet.server(database.server)
        table.add_row(
            database.name,
            database.dbname,
            server.name,
            pool_name(server.name),
            str(server.max_concurrent_backups),
            f"{database.schedule_hour:02d}:00",
        )
    console.print(table)
    return 0


def apply_limits_command(args: argparse.Namespace, settings: Settings) -> int:
    limits = _fleet_file(settings).pool_limits()
    with open_instance() as instance:
        storage = instance.event_log_storage
        if not storage.supports_global_concurrency_limits:
            raise ConfigError(
                "this Dagster instance's storage has no pools; point DAGSTER_HOME at an "
                "instance on PostgreSQL (see dagster.yaml)"
            )
        for pool, limit in limits.items():
            storage.set_concurrency_slots(pool, limit)
            console.print(f"pool {pool}: limit {limit}")
    return 0
