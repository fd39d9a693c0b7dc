"""The demo database a newcomer backs up when no DATABASE_URL is set."""

from __future__ import annotations

import subprocess
from pathlib import Path

from psycopg import sql

from pgvault_assets.engine.postgres.postgres import (
    connect,
    database_exists,
    find_tool,
    server_version,
    tool_env,
)
from pgvault_assets.errors import PgvaultError
from pgvault_assets.settings import DatabaseUrl

SCHEMA = Path(__file__).with_name("demo_schema.sql")


def create_demo_database(server: str, name: str) -> tuple[DatabaseUrl, bool]:
    """Create and load `name` on `server` unless it exists; return its URL and whether it was new."""
    maintenance_url = DatabaseUrl.parse(server, "--server")
    url = maintenance_url.with_dbname(name)
    with connect(maintenance_url) as maintenance:
        if database_exists(maintenance, name):
            return url, False
        major, _ = server_version(maintenance)
        maintenance.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    psql = find_tool("psql", major)
    result = subprocess.run(
        [
            psql,
            "--no-password",
            "--no-psqlrc",
            "--quiet",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            str(SCHEMA),
        ],
        env=tool_env(url),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        with connect(maintenance_url) as maintenance:
            maintenance.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        reason = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise PgvaultError(f"loading the demo schema failed ({reason})")
    return url, True
