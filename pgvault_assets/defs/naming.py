"""What each database's definitions are called in Dagster, decided here and nowhere else.

Without a fleet file the one database of `DATABASE_URL` is a fleet of one, and it keeps the
names its runs, partitions, checks and pools were recorded under (`database_backup`,
`daily_backup_schedule`, `pgvault_backup`, ...), so an upgrade carries its history over. A
fleet file's databases are named after themselves (`backup/<name>`, their server's pool).
Every capability is built from these names alone, the same code for one database or many.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagster import AssetKey

from pgvault_assets.fleet import Fleet, FleetDatabase, pool_name

BACKUP_KEY = AssetKey("database_backup")
"""The single database's backup, under the name its history was recorded with."""


@dataclass(frozen=True)
class DatabaseNames:
    """One database's names, and what its definitions need to know of it."""

    database: FleetDatabase
    pinned: str | None
    """What `VaultResource.settings` pins to: the fleet database's name, or None for
    `DATABASE_URL`'s settings as they are."""
    backup: AssetKey
    drill: AssetKey
    pool: str
    group: str
    schedule: str
    """The schedule that backs it up, which a staleness alert sends the reader to."""
    source: str
    """What the backup dumps, for descriptions."""
    said: str
    """What starts a line about it among others': nothing for the one database."""
    derived_runtime: bool
    """Without a `max_runtime_seconds`, whether the schedule derives the run's limit from the
    recent backups (one store read per tick: the single database) or sets none (a fleet of
    hundreds must not read every store at each tick)."""

    def run_key(self, day: str) -> str:
        """A scheduled run's key: a tick evaluated twice starts nothing twice."""
        return day if self.pinned is None else f"{self.pinned}|{day}"


@dataclass(frozen=True)
class ServerNames:
    """One server's point-in-time recovery names: pgBackRest archives per server."""

    server: str
    pinned: str | None
    """The database of the server `VaultResource.settings` pins to (any of them names the
    same server), or None for `DATABASE_URL`'s settings as they are."""
    base_backup: AssetKey
    suffix: str
    """What ends its job's and schedules' names: nothing for the fleet of one."""
    said: str
    """What starts its archive alerts: nothing for the fleet of one."""

    @property
    def job(self) -> str:
        return f"pitr_base_backup_job{self.suffix}"

    def schedule(self, kind: str) -> str:
        return f"pitr_{kind}_backup_schedule{self.suffix}"


@dataclass(frozen=True)
class Names:
    """The names of one build: each database's, and the jobs and schedules they share."""

    databases: tuple[DatabaseNames, ...]
    backup_job: str
    checks_job: str
    maintenance_prefix: tuple[str, ...]
    """Key prefix of the weekly maintenance assets: none for the one database."""
    maintenance_group: str
    maintenance_job: str
    maintenance_schedule: str
    alert_sensor: str
    servers: tuple[ServerNames, ...]
    """Each server with a database: its stanza is every one of its databases' PITR."""

    def of(self, name: str) -> DatabaseNames:
        return next(names for names in self.databases if names.database.name == name)

    def backup_keys(self) -> dict[AssetKey, str]:
        """Each database's backup asset mapped to the database's name: how the run history
        is read for every database at once."""
        return {names.backup: names.database.name for names in self.databases}

    def server_of(self, database: FleetDatabase) -> ServerNames:
        return next(names for names in self.servers if names.server == database.server)

    def maintenance_key(self, name: str) -> AssetKey:
        return AssetKey([*self.maintenance_prefix, name])


def dagster_name(name: str) -> str:
    """A fleet name as Dagster's group, job and schedule names allow it (`[A-Za-z0-9_]`): a
    fleet name may hold `-`, which the fleet file keeps apart from `_` (fleet.py refuses two
    servers that differ only there)."""
    return name.replace("-", "_")


def fleet_backup_key(database: str) -> AssetKey:
    return AssetKey(["backup", database])


def schedule_name(hour: int) -> str:
    return f"fleet_backup_schedule_{hour:02d}"


def names_of(fleet: Fleet) -> Names:
    """The one place that tells the fleet of one from a fleet file's."""
    if not fleet.from_file:
        (database,) = fleet.databases
        single = DatabaseNames(
            database=database,
            pinned=None,
            backup=BACKUP_KEY,
            drill=AssetKey("disaster_recovery_drill"),
            pool="pgvault_backup",
            group="backups",
            schedule="daily_backup_schedule",
            source="DATABASE_URL",
            said="",
            derived_runtime=True,
        )
        return Names(
            (single,),
            "daily_backup_job",
            "backup_checks_job",
            (),
            "backups",
            "weekly_maintenance_job",
            "weekly_maintenance_schedule",
            "backup_alert_sensor",
            (ServerNames(database.server, None, AssetKey("pitr_base_backup"), "", ""),),
        )
    return Names(
        tuple(
            DatabaseNames(
                database=database,
                pinned=database.name,
                backup=fleet_backup_key(database.name),
                drill=AssetKey(["drill", database.name]),
                pool=pool_name(database.server),
                group=dagster_name(database.server),
                schedule=schedule_name(database.schedule_hour),
                source=f"{database.dbname} on {database.server}",
                said=f"{database.name}: ",
                derived_runtime=False,
            )
            for database in fleet.databases
        ),
        "fleet_backup_job",
        "fleet_backup_checks_job",
        ("fleet",),
        "fleet_maintenance",
        "fleet_maintenance_job",
        "fleet_maintenance_schedule",
        "fleet_alert_sensor",
        tuple(
            _server_names(fleet, server.name) for server in fleet.servers if fleet.on(server.name)
        ),
    )


def _server_names(fleet: Fleet, server: str) -> ServerNames:
    pinned = fleet.on(server)[0].name
    return ServerNames(
        server, pinned, AssetKey(["pitr", server]), f"_{dagster_name(server)}", f"server {server}: "
    )
