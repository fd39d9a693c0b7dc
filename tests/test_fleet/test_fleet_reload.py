"""Editing the fleet file: a database added appears at the code location's next load, and a
database removed leaves the location but keeps its history (materializations, backups).

The code location reads the fleet file when it loads, so each load here is a new process
(what a code server's or the daemon's reload does), against the same real Dagster instance.
"""

from __future__ import annotations

import os

from dagster import AssetKey, DagsterInstance

from pgvault_assets.cli import main
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.fleet import pin_database
from pgvault_assets.settings import load_settings
from tests.conftest import PG_SERVER_URL
from tests.test_fleet import daemon
from tests.test_fleet.helpers import fresh_definitions, write_fleet

BACKUP_KEYS = (
    "sorted(key for key in (k.to_user_string() for k in defs.resolve_all_asset_keys()) "
    "if key.startswith('backup/'))"
)


def test_an_added_database_appears_at_reload_and_a_removed_one_keeps_its_history(
    local_env, make_database, monkeypatch, capsys
):
    urls = {name: daemon.seeded_database(make_database, name) for name in ("a", "b", "c")}
    server = {"main": (f"{PG_SERVER_URL}/postgres", 2)}

    def declare(*names: str) -> None:
        databases = {name: ("main", urls[name].rsplit("/", 1)[1]) for name in names}
        write_fleet(local_env, monkeypatch, servers=server, databases=databases)

    declare("a", "b")
    assert fresh_definitions(BACKUP_KEYS) == ["backup/a", "backup/b"]
    for name in ("a", "b"):
        assert main(["backup", "--database", name]) == 0
    b_settings = pin_database(load_settings(), os.environ, "b")  # before b leaves the file
    capsys.readouterr()

    declare("a", "c")
    assert fresh_definitions(BACKUP_KEYS) == ["backup/a", "backup/c"]

    # b's history stays: its materialization in the instance, its backup in the store.
    (b_day,) = Vault.from_settings(b_settings).backup_dates()
    with DagsterInstance.get() as instance:
        materialized = instance.fetch_materializations(AssetKey(["backup", "b"]), limit=10)
    assert [r.partition_key for r in materialized.records] == [b_day.isoformat()]

    assert main(["list-backups", "--database", "b"]) != 0
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "no database named 'b'" in lines[0] and "a, c" in lines[0], lines[0]
