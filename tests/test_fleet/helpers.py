"""Fleet files for tests: written beside the test, their servers' URLs in the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


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
