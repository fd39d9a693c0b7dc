"""Two fleet databases of one `dbname` on two servers: everything pgvault keys by database (the
store's namespace, Dagster's asset keys, the metrics' series, `--database`) takes the entry's
`name`, so each is backed up, listed, verified and restored apart; and their stagings (each the
same `dbname` on its server's staging) must be two servers, or neither is restored there."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from dagster import AssetKey, DagsterInstance
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.fleet import pin_database
from pgvault_assets.settings import load_settings
from tests.conftest import PG_SERVER_URL, PrivateCluster
from tests.test_engine.helpers import DAY as BACKED_UP
from tests.test_fleet.helpers import write_fleet
from tests.test_recovery.helpers import run

DAY = BACKED_UP.isoformat()  # the run's one clock: named to each backup, never read again
NAMES = ("app_east", "app_west")


@dataclass(frozen=True)
class Twins:
    dbname: str
    urls: dict[str, str]
    """Each fleet database's production URL, by its name."""
    servers: dict[str, str]
    """Each server's maintenance URL, by its name."""


def owners(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM owner ORDER BY name")]


def databases_named_from(server: str, prefix: str) -> list[str]:
    with psycopg.connect(server) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname ^@ %s", (prefix,))
        return sorted(row[0] for row in rows)


def system_identifier(server: str) -> str:
    with psycopg.connect(server) as conn:
        row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    assert row is not None
    return row[0]


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def by_another_name(cluster: PrivateCluster) -> str:
    """`cluster`'s maintenance URL by another name of its host (`localhost`), so its text
    matches no other URL's: only asking the servers tells that they are one."""
    url = cluster.url("postgres")
    assert "@127.0.0.1:" in url
    return url.replace("@127.0.0.1:", "@localhost:")


def back_up_both(capsys: pytest.CaptureFixture[str]) -> None:
    for name in NAMES:
        code, out, err = run(capsys, "backup", "--database", name, "--date", DAY)
        assert code == 0, err
        assert f"backup {DAY} stored" in out


@pytest.fixture
def twins(
    local_env: Path,
    make_database,
    private_postgres: PrivateCluster,
    own_cluster: PrivateCluster,
    monkeypatch: pytest.MonkeyPatch,
):
    """`app_east` on the test server (`east`) and `app_west` on a private cluster (`west`),
    one `dbname`, each with a table `owner` holding its own name; east's staging is a cluster
    of this test's own, west has none."""
    east = make_database("app")
    dbname = east.rsplit("/", 1)[1]
    west = private_postgres.create_database(dbname)
    try:
        urls = {"app_east": east, "app_west": west}
        for name, url in urls.items():
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("CREATE TABLE owner (name text)")
                conn.execute("INSERT INTO owner VALUES (%s)", (name,))
        servers = {"east": f"{PG_SERVER_URL}/postgres", "west": private_postgres.url("postgres")}
        write_fleet(
            local_env,
            monkeypatch,
            servers={name: (url, 1) for name, url in servers.items()},
            databases={"app_east": ("east", dbname), "app_west": ("west", dbname)},
            staging={"east": own_cluster.url("postgres")},
        )
        yield Twins(dbname, urls, servers)
    finally:
        with psycopg.connect(private_postgres.url("postgres"), autocommit=True) as conn:
            for name in databases_named_from(private_postgres.url("postgres"), dbname):
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_each_is_backed_up_listed_and_measured_under_its_own_name(
    twins: Twins, local_env: Path, capsys
):
    back_up_both(capsys)

    code, out, err = run(capsys, "list-backups", "--json")
    assert code == 0, err
    listed = json.loads(out)
    rows = {row["database"]: row for row in listed}
    assert len(listed) == 2 and sorted(rows) == list(NAMES)
    for name in NAMES:
        assert rows[name]["date"] == DAY
        assert rows[name]["key"] == f"test/{name}/{DAY}/db_backup.sql.gz.enc"
    assert rows["app_east"]["sha256"] != rows["app_west"]["sha256"]

    # Each backup is of its own server's database, and west's backup replaced nothing of east's.
    for name, server in zip(NAMES, twins.servers.values(), strict=True):
        manifest = Vault.from_settings(
            pin_database(load_settings(), os.environ, name)
        ).read_manifest(BACKED_UP)
        assert manifest.source is not None
        assert manifest.source.database == twins.dbname
        assert manifest.source.system_identifier == system_identifier(server)
        assert manifest.sha256 == rows[name]["sha256"]

    code, out, err = run(capsys, "status")
    assert code == 0, err
    for name in NAMES:
        (row,) = [line for line in out.splitlines() if f" {name} " in line]
        assert DAY in row and row.rstrip(" │").endswith("ok")

    with DagsterInstance.get() as instance:
        for name in NAMES:
            event = instance.get_latest_materialization_event(AssetKey(["backup", name]))
            assert event is not None and event.asset_materialization is not None
            assert event.asset_materialization.partition == DAY
            assert event.asset_materialization.metadata["sha256"].value == rows[name]["sha256"]

    written = local_env / "pgvault.prom"
    code, _, err = run(capsys, "metrics", "write", str(written))
    assert code == 0, err
    (sizes,) = [
        family
        for family in text_string_to_metric_families(written.read_text())
        if family.name == "pgvault_backup_last_size_bytes"
    ]
    assert {sample.labels["database"]: sample.value for sample in sizes.samples} == {
        name: rows[name]["size_bytes"] for name in NAMES
    }


def test_each_verifies_and_one_restored_into_its_staging_is_its_own_other_server_untouched(
    twins: Twins, own_cluster: PrivateCluster, capsys
):
    back_up_both(capsys)
    for name in NAMES:
        code, out, err = run(capsys, "verify-backup", "--database", name, "--date", DAY)
        assert code == 0, err
        assert f"backup {DAY} is intact" in out

    code, _, err = run(
        capsys,
        *("restore-from-backup", "--database", "app_east", "--date", DAY, "--target", "staging"),
    )

    assert code == 0, err
    assert owners(own_cluster.url(twins.dbname)) == ["app_east"]
    assert owners(twins.urls["app_east"]) == ["app_east"]
    assert owners(twins.urls["app_west"]) == ["app_west"]
    assert databases_named_from(twins.servers["west"], twins.dbname) == [twins.dbname]
    assert databases_named_from(twins.servers["east"], twins.dbname) == [twins.dbname]


def test_their_servers_sharing_one_staging_server_is_refused_there_and_another_dbname_is_not(
    twins: Twins,
    private_postgres: PrivateCluster,
    own_cluster: PrivateCluster,
    local_env: Path,
    monkeypatch,
    capsys,
):
    """Both would be staged into one database, each restore replacing the other's: refused
    before anything is written, under any two variables that reach that server. A database of
    another dbname on west still stages there."""
    solo = private_postgres.create_database(f"{twins.dbname}_solo")
    with psycopg.connect(solo, autocommit=True) as conn:
        conn.execute("CREATE TABLE owner (name text); INSERT INTO owner VALUES ('solo')")
    write_fleet(
        local_env,
        monkeypatch,
        servers={name: (url, 1) for name, url in twins.servers.items()},
        databases={
            "app_east": ("east", twins.dbname),
            "app_west": ("west", twins.dbname),
            "solo": ("west", f"{twins.dbname}_solo"),
        },
        staging={"east": own_cluster.url("postgres"), "west": by_another_name(own_cluster)},
    )
    back_up_both(capsys)
    code, _, err = run(capsys, "backup", "--database", "solo")
    assert code == 0, err
    restore = ("restore-from-backup", "--date", DAY, "--target", "staging", "--database")

    for name, other, server, other_server in (
        ("app_east", "app_west", "east", "west"),
        ("app_west", "app_east", "west", "east"),
    ):
        code, _, err = run(capsys, *restore, name)
        assert code == 2
        variable, others = (
            f"PGVAULT_TEST_{server.upper()}_URL_STAGING",
            f"PGVAULT_TEST_{other_server.upper()}_URL_STAGING",
        )
        assert one_line(err) == (
            f"error: server {server}: its staging_url_env {variable} and database {other}'s "
            f"staging (server {other_server}: its staging_url_env {others}) reach the same "
            f"database ({twins.dbname}, one server): point {variable} at another server; "
            "nothing was changed"
        )
    assert databases_named_from(own_cluster.url("postgres"), twins.dbname) == []

    code, _, err = run(capsys, *restore, "solo")
    assert code == 0, err
    assert owners(own_cluster.url(f"{twins.dbname}_solo")) == ["solo"]
    assert owners(twins.urls["app_east"]) == ["app_east"]
    assert owners(twins.urls["app_west"]) == ["app_west"]


def test_a_staging_is_refused_while_the_other_ones_staging_cannot_be_told_apart(
    twins: Twins, own_cluster: PrivateCluster, local_env: Path, monkeypatch, capsys
):
    write_fleet(
        local_env,
        monkeypatch,
        servers={name: (url, 1) for name, url in twins.servers.items()},
        databases={"app_east": ("east", twins.dbname), "app_west": ("west", twins.dbname)},
        staging={
            "east": own_cluster.url("postgres"),
            "west": "postgresql://postgres@127.0.0.1:1/postgres",
        },
    )

    code, _, err = run(
        capsys,
        *("restore-from-backup", "--database", "app_east", "--date", DAY, "--target", "staging"),
    )

    assert code == 2
    assert one_line(err).startswith(
        "error: cannot tell server east: its staging_url_env PGVAULT_TEST_EAST_URL_STAGING from "
        "database app_west's staging (server west: its staging_url_env "
        "PGVAULT_TEST_WEST_URL_STAGING), so nothing was written to staging: "
    )
    assert databases_named_from(own_cluster.url("postgres"), twins.dbname) == []
