"""Staging is never production: before pgvault writes into staging (a restore, a rollback, a
row recovery, a recovery to a time, an integrity check it records), the staging URL must reach
none of the production databases pgvault knows (`DATABASE_URL`, every fleet database).

URL text cannot tell: `localhost` and `127.0.0.1`, two port forwards or a DNS alias reach one
server. Nor can what a server says of itself: a clone made from a physical backup (a valid
staging) shares production's system identifier and database oids, and may share its data
directory's path. So pgvault asks the servers: it holds a session on staging's server under a random
`application_name` and looks for it in each production server's `pg_stat_activity`, which
lists every session of its own server, none of another's, and shows `application_name` to
any role. Found there, staging is on that server, and is production when it names one of the
production databases there (database names are unique on a server).

Two fleet databases of one `dbname` on two servers stage into that name on their servers'
stagings: probed the same way, a staging that is the other's is refused too, or a restore of
either would replace the other's staging (and a rollback swap in the other's data).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from pgvault_assets.engine.postgres.postgres import DatabaseUnavailable, connect
from pgvault_assets.errors import ConfigError
from pgvault_assets.fleet import load_fleet
from pgvault_assets.settings import DatabaseUrl, Settings

MAINTENANCE_DATABASE = "postgres"


class StagingIsProduction(ConfigError):
    """The staging URL reaches a production database, or another fleet database's staging:
    nothing may be written there."""


@dataclass(frozen=True)
class _Taken:
    """A database staging must not be, and the setting that names it, as an error says it."""

    url: DatabaseUrl
    named_by: str


def _taken(settings: Settings, env: Mapping[str, str]) -> tuple[str, str, list[_Taken]]:
    """The setting that names staging, what to do when it is taken, and every database it must
    not be whose URL is set: `DATABASE_URL`, each database of the fleet (the fleet of one's is
    `DATABASE_URL` again, counted once), then the stagings of the fleet's other databases of
    this one's `dbname`."""
    fleet = load_fleet(settings.platform.fleet_file)
    found: dict[str, _Taken] = {}
    raw = env.get("DATABASE_URL", "").strip()
    if raw:
        first = DatabaseUrl.parse(raw, "DATABASE_URL")
        found[first.secret] = _Taken(first, "DATABASE_URL")
    for database in fleet.databases:
        if (url := fleet.production_url(database, env)) is not None:
            server = fleet.server(database.server)
            named = f"production database {database.name} (url_env {server.url_env})"
            found.setdefault(url.secret, _Taken(url, named))
    this = fleet.choose(settings.database)
    for twin in fleet.databases:
        if twin.name == this.name or twin.dbname != this.dbname:
            continue
        if (url := fleet.staging_url(twin, env)) is not None:
            variable = fleet.server(twin.server).staging_url_env
            named = f"database {twin.name}'s staging (server {twin.server}: its staging_url_env {variable})"
            found.setdefault(url.secret, _Taken(url, named))
    setting, advice = fleet.staging_named(fleet.server(this.server))
    return setting, advice, list(found.values())


def staging_target(settings: Settings, env: Mapping[str, str]) -> DatabaseUrl:
    """The staging URL, once no production database (nor another database's staging) is
    behind it; `StagingIsProduction` (one line naming both settings) when one is. A server
    of theirs that cannot be reached stops it too: pgvault cannot tell that staging is not
    that server by another name."""
    staging = settings.target_url("staging")
    staging_setting, advice, taken = _taken(settings, env)
    servers: dict[str, list[_Taken]] = {}
    for database in taken:
        key = database.url.with_dbname(MAINTENANCE_DATABASE).secret
        servers.setdefault(key, []).append(database)
    token = f"pgvault-staging-probe-{secrets.token_hex(16)}"
    # An open transaction keeps a pooler's server connection (and its application_name) ours.
    with connect(
        staging.with_dbname(MAINTENANCE_DATABASE), autocommit=False, application_name=token
    ) as probe:
        probe.execute("SELECT 1")
        for group in servers.values():
            first = group[0]
            try:
                with connect(first.url.with_dbname(MAINTENANCE_DATABASE)) as conn:
                    seen = conn.execute(
                        "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (token,)
                    ).fetchone()
            except DatabaseUnavailable as exc:
                raise ConfigError(
                    f"cannot tell {staging_setting} from {first.named_by}, so nothing was "
                    f"written to staging: {exc}"
                ) from None
            for database in group if seen else ():
                if database.url.dbname == staging.dbname:
                    raise StagingIsProduction(
                        f"{staging_setting} and {database.named_by} reach the same database "
                        f"({staging.dbname}, one server): {advice}; nothing was changed"
                    )
    return staging
