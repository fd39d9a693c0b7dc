"""The fleet file: the servers and databases pgvault backs up, read and validated once.

Without a fleet file (`PGVAULT_FLEET_FILE` unset) the fleet is the one database of
`DATABASE_URL`, stored under the environment's own prefix exactly as before. With one, each
database lives under `{environment}/{database}` (names.py) and a command works on one
database at a time: `pin_database` turns the environment's settings into that database's.

A server's URL is read from the environment variable the file names, never from the file,
and only when a command or a run needs it: the file can be committed and shown.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from pgvault_assets.errors import ConfigError
from pgvault_assets.settings import DatabaseUrl, RetentionPolicy, Settings

DEFAULT_SCHEDULE_HOUR = 2
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
VARIABLE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Folders an environment keeps beside its databases' (audit, reports, drills, the doctor's
# probes, pitr's sealed passphrase): a database of one of these names would share them.
# `staging` and `production` are the targets: `check-database-integrity --database staging`
# keeps meaning the target.
RESERVED_NAMES = frozenset(
    {"audit", "reports", "drills", "doctor", "pitr", "staging", "production"}
)
SINGLE = "default"


def _name(value: str) -> str:
    if not NAME_PATTERN.match(value):
        raise ValueError(
            f"{value!r} is not a name: use lowercase letters, digits, '-' or '_' (at most 63), "
            "starting with a letter or digit"
        )
    return value


def _database_name(value: str) -> str:
    _name(value)
    if value in RESERVED_NAMES:
        raise ValueError(
            f"{value!r} is reserved for the environment's own folder or a target; choose another"
        )
    try:
        date.fromisoformat(value)
    except ValueError:
        return value
    raise ValueError(f"{value!r} looks like a date, which would pose as a backup's folder")


def _variable(value: str) -> str:
    if not VARIABLE_PATTERN.match(value):
        raise ValueError(
            "is not an environment variable name: name the variable that holds the URL, "
            "never the URL itself"
        )
    return value


Name = Annotated[str, AfterValidator(_name)]
DatabaseName = Annotated[str, AfterValidator(_database_name)]
Variable = Annotated[str, AfterValidator(_variable)]


class _Model(BaseModel):
    # Built when a fleet file is first read, not when a command that reads none starts.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


# The restorable check and the drill: this many full restores at a time, whatever launched them.
RESTORE_PROOF_POOL = "pgvault_restore_proof"


def pool_name(server: str) -> str:
    """The Dagster pool of one server's backups, whose limit is its `max_concurrent_backups`."""
    return f"pgvault/server/{server}"


class Server(_Model):
    """One PostgreSQL server: where its URL comes from and how many dumps it bears at once."""

    name: Name
    url_env: Variable
    max_concurrent_backups: int = Field(default=1, ge=1, le=1000)
    staging_url_env: Variable | None = None


class RetentionOverride(_Model):
    daily_days: int | None = Field(default=None, ge=1, le=36500)
    weekly_days: int | None = Field(default=None, ge=1, le=36500)
    monthly_days: int | None = Field(default=None, ge=1, le=36500)

    def applied_to(self, policy: RetentionPolicy) -> RetentionPolicy:
        return dataclasses.replace(
            policy, **{k: v for k, v in self.model_dump().items() if v is not None}
        )


class RunSize(_Model):
    """The worker of one backup run, for launchers that start one per run (a task, a pod).

    One size in the file, the tags of both launchers on the run: each reads its own."""

    cpu: float = Field(gt=0, le=16)
    """vCPUs."""
    memory_mib: int = Field(ge=256, le=120 * 1024)

    def tags(self) -> dict[str, str]:
        """`ecs/cpu` and `ecs/memory` for the EcsRunLauncher (CPU units, MiB) and the
        `dagster-k8s/config` container resources for the K8sRunLauncher (memory limited to
        its request, so a run is never killed for memory it was promised)."""
        memory = f"{self.memory_mib}Mi"
        resources = {
            "requests": {"cpu": f"{round(self.cpu * 1000)}m", "memory": memory},
            "limits": {"memory": memory},
        }
        return {
            "ecs/cpu": str(round(self.cpu * 1024)),
            "ecs/memory": str(self.memory_mib),
            "dagster-k8s/config": json.dumps({"container_config": {"resources": resources}}),
        }


class FleetDatabase(_Model):
    """One database: its server, its name there, when and how its backup run goes."""

    name: DatabaseName
    server: Name
    dbname: str = Field(min_length=1, max_length=63)
    schedule_hour: int = Field(default=DEFAULT_SCHEDULE_HOUR, ge=0, le=23)
    retention: RetentionOverride | None = None
    run_size: RunSize | None = None
    """The run worker's CPU and memory; without it, the launcher's default size."""
    run_tags: dict[str, str] = Field(default_factory=dict)
    """More tags each backup run carries (a launcher's own, a team's)."""
    max_runtime_seconds: int | None = Field(default=None, ge=60, le=7 * 24 * 3600)
    """The longest a backup run may take before run monitoring fails it."""
    restore_proof: Literal["daily", "weekly"] | None = None
    """How often the restorable check restores the backup; None: RESTORE_VERIFY_SCHEDULE."""


class Fleet(_Model):
    servers: tuple[Server, ...] = Field(min_length=1)
    databases: tuple[FleetDatabase, ...] = Field(min_length=1)
    max_concurrent_restore_proofs: int = Field(default=1, ge=1, le=100)
    """Restore proofs at once across the fleet: each restores a whole backup on pgvault's
    machine (or RESTORE_CHECK_DATABASE_URL's server), whatever server it came from."""
    source: Path | None = None
    """The fleet file; None for the fleet of one from `DATABASE_URL`."""

    @property
    def from_file(self) -> bool:
        return self.source is not None

    def server(self, name: str) -> Server:
        return next(server for server in self.servers if server.name == name)

    def on(self, server: str) -> tuple[FleetDatabase, ...]:
        """The databases on `server`, in the file's order."""
        return tuple(database for database in self.databases if database.server == server)

    def pool_limits(self) -> dict[str, int]:
        """Each server's pool and its limit, and the restore proofs', as `pgvault fleet
        apply-limits` sets them."""
        limits = {pool_name(s.name): s.max_concurrent_backups for s in self.servers}
        return {**limits, RESTORE_PROOF_POOL: self.max_concurrent_restore_proofs}

    def production_url(self, database: FleetDatabase, env: Mapping[str, str]) -> DatabaseUrl | None:
        """`database`'s URL, when its server's variable is set: a fleet file's server URL with
        the database's `dbname`; the fleet of one's `DATABASE_URL`, which names its own."""
        server = self.server(database.server)
        raw = env.get(server.url_env, "").strip()
        if not raw:
            return None
        url = DatabaseUrl.parse(raw, server.url_env)
        return url.with_dbname(database.dbname) if self.from_file else url

    def staging_url(self, database: FleetDatabase, env: Mapping[str, str]) -> DatabaseUrl | None:
        """`database`'s staging in a fleet file, when its server names a staging variable and
        that is set: the staging server's URL with the database's `dbname`."""
        variable = self.server(database.server).staging_url_env
        raw = env.get(variable, "").strip() if variable else ""
        if not self.from_file or not variable or not raw:
            return None
        return DatabaseUrl.parse(raw, variable).with_dbname(database.dbname)

    def staging_named(self, server: Server) -> tuple[str, str]:
        """How an error names `server`'s staging variable, and what to do when it reaches
        production. Naming only, as `names.namespace` is: a fleet file's variable is named
        with the entry that names it, and its staging takes the database's name (so only
        another server is staging); the fleet of one's is the manual's STAGING_DATABASE_URL,
        which names its own database."""
        variable = server.staging_url_env
        if self.from_file:
            return f"server {server.name}: its staging_url_env {variable}", (
                f"point {variable} at another server"
            )
        return f"{variable}", f"point {variable} at another database, on this server or another"

    def choose(self, name: str | None) -> FleetDatabase:
        """The database `name`, or the only one; a one-line error naming the choices else."""
        names = ", ".join(database.name for database in self.databases)
        if name is None:
            if len(self.databases) == 1:
                return self.databases[0]
            raise ConfigError(
                f"the fleet file {self.source} has {len(self.databases)} databases; "
                f"pass --database with one of: {names}"
            )
        if not self.from_file:
            raise ConfigError(
                f"--database {name!r} needs a fleet file; set PGVAULT_FLEET_FILE, "
                "or leave --database out to back up DATABASE_URL"
            )
        for database in self.databases:
            if database.name == name:
                return database
        raise ConfigError(
            f"the fleet file {self.source} has no database named {name!r}; choose one of: {names}"
        )


def single_fleet() -> Fleet:
    """`DATABASE_URL` as a fleet of one, its objects under the environment's own prefix."""
    return Fleet(
        servers=(
            Server(name=SINGLE, url_env="DATABASE_URL", staging_url_env="STAGING_DATABASE_URL"),
        ),
        databases=(FleetDatabase(name=SINGLE, server=SINGLE, dbname=SINGLE),),
    )


def _where(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "is required"
    elif first["type"] == "extra_forbidden":
        message = "is not a field pgvault knows"
    where = _where(tuple(first["loc"]))
    return f"{where}: {message}" if where else message


def _cross_check(fleet: Fleet) -> str | None:
    """What a field-by-field validation cannot see: names that must be unique or must exist."""
    servers: dict[str, int] = {}
    for i, server in enumerate(fleet.servers):
        if server.name in servers:
            return f"servers[{i}].name: {server.name!r} is already servers[{servers[server.name]}]"
        # Dagster's names take `_` for `-` (defs/naming.dagster_name): `db-a` and `db_a` would clash.
        twin = next(
            (s for s in servers if s.replace("-", "_") == server.name.replace("-", "_")), None
        )
        if twin is not None:
            return (
                f"servers[{i}].name: {server.name!r} differs from servers[{servers[twin]}] "
                f"({twin!r}) only in '-' and '_', which Dagster's names do not tell apart; rename one"
            )
        servers[server.name] = i
    databases: dict[str, int] = {}
    targets: dict[tuple[str, str], int] = {}
    for i, database in enumerate(fleet.databases):
        if database.name in databases:
            return f"databases[{i}].name: {database.name!r} is already databases[{databases[database.name]}]"
        databases[database.name] = i
        if database.server not in servers:
            return f"databases[{i}].server: no server named {database.server!r}"
        if database.run_size and (
            both := sorted(database.run_size.tags().keys() & database.run_tags)
        ):
            return f"databases[{i}].run_tags: {both[0]!r} is set by run_size; keep one of the two"
        target = (database.server, database.dbname)
        if target in targets:
            return (
                f"databases[{i}].dbname: {database.dbname!r} on {database.server!r} "
                f"is already databases[{targets[target]}]"
            )
        targets[target] = i
    return None


def parse_fleet(text: str, source: Path) -> Fleet:
    """The fleet in `text`; `ConfigError` with one line naming the first bad field else."""
    where = f"fleet file {source}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "unreadable"
        raise ConfigError(f"{where}: not valid YAML{line}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with servers: and databases:")
    try:
        fleet = Fleet.model_validate({**data, "source": source})
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_first_error(exc)}") from None
    if problem := _cross_check(fleet):
        raise ConfigError(f"{where}: {problem}")
    return fleet


def load_fleet(path: Path | None) -> Fleet:
    """The fleet of the fleet file at `path` (`PGVAULT_FLEET_FILE`), or `DATABASE_URL` alone
    without one."""
    if path is None:
        return single_fleet()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"PGVAULT_FLEET_FILE {path} does not exist; point it at the fleet's YAML file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"fleet file {path} cannot be read: {exc}") from None
    return parse_fleet(text, path)


def _url(env: Mapping[str, str], variable: str, server: Server, dbname: str) -> DatabaseUrl:
    raw = env.get(variable, "").strip()
    if not raw:
        raise ConfigError(
            f"{variable} is not set; the fleet file names it for server {server.name!r}: "
            "set it to that server's postgresql:// URL"
        )
    return DatabaseUrl.parse(raw, variable).with_dbname(dbname)


def pin_database(settings: Settings, env: Mapping[str, str], name: str | None) -> Settings:
    """`settings` for the fleet database `name` (or the only one): its URLs, read from the
    variables its server names, its retention and its namespace. Without a fleet file, the
    settings as they are (and `name` must be None)."""
    fleet = load_fleet(settings.platform.fleet_file)
    database = fleet.choose(name)
    if not fleet.from_file:
        return settings
    server = fleet.server(database.server)
    staging = (
        _url(env, server.staging_url_env, server, database.dbname)
        if server.staging_url_env
        else None
    )
    return dataclasses.replace(
        settings,
        database=database.name,
        server=server.name,
        backup_hour=database.schedule_hour,
        database_url=_url(env, server.url_env, server, database.dbname),
        staging_database_url=staging,
        retention=(
            database.retention.applied_to(settings.retention)
            if database.retention
            else settings.retention
        ),
        restore_verify_schedule=database.restore_proof or settings.restore_verify_schedule,
    )


def each_database_apart(
    settings: Settings, env: Mapping[str, str]
) -> list[tuple[str, Settings | ConfigError]]:
    """Every database of the fleet with the settings `--database NAME` would give it, in the
    file's order; without a fleet file, `DATABASE_URL`'s alone (named `default`).

    A database whose settings cannot be made (its server's variable unset) comes with its
    error instead of stopping the others: fleet-wide work (retention, the report, status)
    reports that database and goes on with the rest."""
    fleet = load_fleet(settings.platform.fleet_file)
    if not fleet.from_file:
        return [(SINGLE, settings)]
    found: list[tuple[str, Settings | ConfigError]] = []
    for database in fleet.databases:
        try:
            found.append((database.name, pin_database(settings, env, database.name)))
        except ConfigError as exc:
            found.append((database.name, exc))
    return found
