"""Fleet files for tests: written beside the test, their servers' URLs in the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from dagster import AssetChecksDefinition, AssetsDefinition, Definitions, RunRequest

from pgvault_assets.defs.backup import (
    Build,
    backup_defs,
    backup_run_request,
    daily_cron,
    make_database_backup,
    make_decrypts_fully,
)
from pgvault_assets.defs.maintenance import maintenance_assets
from pgvault_assets.defs.naming import names_of
from pgvault_assets.fleet import Fleet, parse_fleet
from pgvault_assets.settings import platform_section
from tests.conftest import PG_SERVER_URL

REPO = Path(__file__).resolve().parents[2]
# As the code location reads it when it loads: the suite's environment (its BACKUP_START_DATE).
CONFIG = platform_section()


def write_fleet(
    directory: Path,
    monkeypatch: pytest.MonkeyPatch,
    servers: dict[str, tuple[str, int]],
    databases: dict[str, tuple[str, str]],
    staging: dict[str, str] | None = None,
    retention: dict[str, dict[str, int]] | None = None,
) -> Path:
    """A fleet file of `servers` (name -> (server URL, limit)) and `databases`
    (name -> (server, dbname)), with PGVAULT_FLEET_FILE and each server's variable set;
    `staging` maps a server to its staging server's URL, `retention` a database to its
    retention override."""
    document: dict[str, list[dict[str, object]]] = {"servers": [], "databases": []}
    for name, (url, limit) in servers.items():
        variable = f"PGVAULT_TEST_{name.upper()}_URL"
        monkeypatch.setenv(variable, url)
        server: dict[str, object] = {
            "name": name,
            "url_env": variable,
            "max_concurrent_backups": limit,
        }
        if staging and name in staging:
            monkeypatch.setenv(f"{variable}_STAGING", staging[name])
            server["staging_url_env"] = f"{variable}_STAGING"
        document["servers"].append(server)
    for name, (server, dbname) in databases.items():
        database: dict[str, object] = {"name": name, "server": server, "dbname": dbname}
        if retention and name in retention:
            database["retention"] = retention[name]
        document["databases"].append(database)
    path = directory / "fleet.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    monkeypatch.setenv("PGVAULT_FLEET_FILE", str(path))
    return path


def alpha_and_beta(
    directory: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_database: Callable[[str], str],
    staging: str | None = None,
) -> tuple[dict[str, str], Path]:
    """Databases `alpha` and `beta` on one server `main` (limit 2), each with a table `owner`
    holding its own name, declared in a fleet file (`staging`: the server's staging URL).
    Their URLs, and the file."""
    urls = {name: make_database(name) for name in ("alpha", "beta")}
    for name, url in urls.items():
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE owner (name text); INSERT INTO owner VALUES ('{name}')")
    path = write_fleet(
        directory,
        monkeypatch,
        servers={"main": (f"{PG_SERVER_URL}/postgres", 2)},
        databases={name: ("main", url.rsplit("/", 1)[1]) for name, url in urls.items()},
        staging=None if staging is None else {"main": staging},
    )
    return urls, path


def fresh_definitions(expression: str) -> Any:
    """`expression`, over `defs` of the code location loaded afresh in a process of its own
    (as a reload or the daemon loads it), under the current environment; JSON-decoded."""
    script = f"import json\nfrom pgvault_assets.definitions import defs\nprint(json.dumps({expression}))\n"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def backup_definitions(
    fleet: Fleet, cron_for_hour: Callable[[int], str] = daily_cron
) -> Definitions:
    """The fleet's backups, their checks, jobs and schedules, built as the code location
    builds them (without its other capabilities)."""
    return backup_defs(Build.of(fleet, CONFIG), cron_for_hour)


def fleet_backup(fleet: Fleet, name: str) -> AssetsDefinition:
    build = Build.of(fleet, CONFIG)
    return make_database_backup(build, build.names.of(name))


def fleet_decrypts_fully(fleet: Fleet, name: str) -> AssetChecksDefinition:
    build = Build.of(fleet, CONFIG)
    return make_decrypts_fully(build, build.names.of(name))


def run_requests(fleet: Fleet, scheduled: datetime, environment: str) -> list[RunRequest]:
    """What the schedules request for every database of `fleet` at `scheduled`."""
    (job, _) = backup_definitions(fleet).jobs
    return [
        backup_run_request(job.run_request_for_partition, names, scheduled, environment)
        for names in names_of(fleet).databases
    ]


def fleet_maintenance_assets() -> list[AssetsDefinition]:
    """The weekly maintenance assets under a fleet's names (`fleet/...`): they read the fleet
    file of the environment when they run, whichever fleet named them."""
    named_by = parse_fleet(
        "servers: [{name: main, url_env: MAIN_URL}]\ndatabases: [{name: any, server: main, dbname: any}]",
        Path("fleet.yaml"),
    )
    return maintenance_assets(Build.of(named_by, CONFIG))
