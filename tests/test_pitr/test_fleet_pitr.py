"""Point-in-time recovery per server of a fleet file: one stanza per server, every database
of that server recovers from it; the fleet of one keeps the paths it was set up under."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterInstance, DefaultScheduleStatus, build_sensor_context, materialize

from pgvault_assets.defs.backup import Build
from pgvault_assets.defs.pitr import pitr_defs
from pgvault_assets.defs.resources import AlertsResource, VaultResource
from pgvault_assets.engine.basics import names
from pgvault_assets.engine.postgres.cluster import start_cluster
from pgvault_assets.fleet import load_fleet, pin_database
from pgvault_assets.settings import Settings, load_settings, platform_section
from tests.conftest import PG_SERVER_URL
from tests.test_fleet.helpers import write_fleet
from tests.test_metrics import samples
from tests.test_pitr.conftest import ArchivingServer, pgvault

WINDOW = re.compile(r"recoverable window: (.+)")


@dataclass(frozen=True)
class Fleet:
    server: ArchivingServer
    dbnames: dict[str, str]
    """alpha and beta on the archiving server `main`, gamma on `quiet`, which does not archive;
    main's staging is the shared server, where alpha's and beta's staging databases are named
    as theirs."""

    def settings(self, database: str) -> Settings:
        return pin_database(load_settings(), os.environ, database)

    def staging_rows(self, database: str) -> list[int]:
        url = f"{PG_SERVER_URL}/{self.dbnames[database]}"
        with psycopg.connect(url) as conn:
            return [row[0] for row in conn.execute("SELECT id FROM orders ORDER BY id")]

    def sql(self, database: str, query: str) -> None:
        self.server.sql(query, dbname=self.dbnames[database])


@pytest.fixture
def fleet(
    archiving_server: ArchivingServer,
    make_database: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Fleet:
    """Each database of `main` has a namesake on the shared server: its staging database."""
    dbnames = {name: make_database(name).rsplit("/", 1)[1] for name in ("alpha", "beta", "gamma")}
    for name in ("alpha", "beta"):
        archiving_server.sql(f'CREATE DATABASE "{dbnames[name]}"', dbname="postgres")
    write_fleet(
        tmp_path,
        monkeypatch,
        {
            "main": (archiving_server.cluster.url.secret, 1),
            "quiet": (f"{PG_SERVER_URL}/postgres", 1),
        },
        {"alpha": ("main", dbnames["alpha"]), "beta": ("main", dbnames["beta"])}
        | {"gamma": ("quiet", dbnames["gamma"])},
        staging={"main": f"{PG_SERVER_URL}/postgres"},
    )
    return Fleet(archiving_server, dbnames)


def set_up_main(fleet: Fleet) -> None:
    """PITR on `main` as the README says, through one of its databases."""
    assert pgvault("pitr", "init", "--database", "alpha") == 0
    fleet.server.enable_archiving(fleet.settings("alpha"))
    assert pgvault("pitr", "init", "--database", "alpha") == 0
    assert pgvault("pitr", "backup", "--database", "alpha", "--type", "full") == 0


def printed(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = pgvault(*argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_fleet_of_one_keeps_its_configuration_stanza_and_repository(
    archiving_server: ArchivingServer,
) -> None:
    stanza = names.pitr_stanza(load_settings())
    assert (stanza.name, stanza.directory, stanza.s3_path) == (
        "test",
        archiving_server.pitr_dir,
        "/pgbackrest/test",
    )
    assert pgvault("pitr", "init") == 0
    config = (archiving_server.pitr_dir / "pgbackrest.conf").read_text()
    assert "\n[test]\n" in config
    assert f"repo1-path={archiving_server.pitr_dir / 'repo'}\n" in config
    assert not (archiving_server.pitr_dir / "servers").exists()


def test_a_fleet_database_recovers_from_its_servers_stanza_and_leaves_the_others_alone(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pitr_dir = fleet.server.pitr_dir
    code, _, err = printed(capsys, "pitr", "init")
    assert code == 2 and "pass --database with one of: alpha, beta, gamma" in err

    assert pgvault("pitr", "init", "--database", "alpha") == 0
    config = pitr_dir / "servers" / "main" / "pgbackrest.conf"
    assert "\n[test-main]\n" in config.read_text()
    assert f"repo1-path={pitr_dir / 'servers' / 'main' / 'repo'}\n" in config.read_text()
    assert not (pitr_dir / "pgbackrest.conf").exists()
    fleet.server.enable_archiving(fleet.settings("alpha"))
    code, out, _ = printed(capsys, "pitr", "init", "--database", "beta")
    assert code == 0 and "check passed" in out and f"{config} (stanza test-main)" in out
    assert pgvault("pitr", "backup", "--database", "alpha", "--type", "full") == 0

    for name in ("alpha", "beta"):
        fleet.sql(name, "CREATE TABLE orders (id int PRIMARY KEY)")
        fleet.sql(name, "INSERT INTO orders SELECT generate_series(1, 3)")
    with psycopg.connect(f"{PG_SERVER_URL}/{fleet.dbnames['beta']}", autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders VALUES (42)")
    target = fleet.server.now()
    fleet.sql("alpha", "INSERT INTO orders SELECT generate_series(4, 6)")
    fleet.server.switch_and_wait()

    code, out, err = printed(
        capsys,
        *("restore-to-time", "--database", "alpha", "--time", target.isoformat()),
        *("--target", "staging", "--skip-confirmation"),
    )
    assert code == 0, err
    assert fleet.staging_rows("alpha") == [1, 2, 3]
    assert fleet.staging_rows("beta") == [42]  # beta's staging: not touched

    # beta shares main's stanza: its rows as of the time come from it too (a dry run).
    code, out, err = printed(
        capsys,
        *("recover-rows", "--database", "beta", "--time", target.isoformat()),
        *("--table", "public.orders", "--target", "staging"),
    )
    assert code == 0, err
    assert f"3 rows missing from {fleet.dbnames['beta']} (public.orders: 3)" in out
    assert fleet.staging_rows("beta") == [42]

    # beta shows main's window too; gamma's server archives nowhere yet.
    windows = [
        WINDOW.findall(printed(capsys, "pitr", "status", "--database", name)[1])
        for name in ("alpha", "beta")
    ]
    assert windows[0] and windows[0] == windows[1]
    code, _, err = printed(capsys, "pitr", "status", "--database", "gamma")
    assert code == 2 and "run pgvault pitr init --database gamma" in err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = printed(capsys, "list-backups", "--database", "beta")
    assert code == 0 and "point-in-time window: " in out
    _, out, _ = printed(capsys, "doctor", "--database", "beta")
    assert "test-main" in out  # its WAL archiving row: the stanza of its server

    # Each database carries its server's window; gamma has none.
    target_file = tmp_path / "pgvault.prom"
    assert pgvault("metrics", "write", str(target_file)) == 0
    ends = {
        labels: value
        for (name, labels), value in samples(target_file.read_text()).items()
        if name == "pgvault_pitr_window_end_timestamp_seconds"
    }
    assert set(ends) == {f'database="{n}",environment="test"' for n in ("alpha", "beta")}
    assert len(set(ends.values())) == 1


def test_in_dagster_each_server_has_its_base_backup_and_one_sensor_watches_them_all(
    fleet: Fleet, instance: DagsterInstance, alerts_captured
) -> None:
    set_up_main(fleet)
    defs = pitr_defs(Build.of(load_fleet(load_settings().platform.fleet_file), platform_section()))
    statuses = {s.name: s.default_status for s in defs.schedules}
    assert statuses == {
        "pitr_full_backup_schedule_main": DefaultScheduleStatus.RUNNING,
        "pitr_diff_backup_schedule_main": DefaultScheduleStatus.RUNNING,
        "pitr_full_backup_schedule_quiet": DefaultScheduleStatus.STOPPED,
        "pitr_diff_backup_schedule_quiet": DefaultScheduleStatus.STOPPED,
    }
    resources = {"vault": VaultResource(), "alerts": AlertsResource()}
    main = next(a for a in defs.assets if a.key.path == ["pitr", "main"])
    result = materialize(
        [main],
        instance=instance,
        resources=resources,
        run_config={"ops": {"pitr__main": {"config": {"kind": "diff"}}}},
    )
    assert result.success
    (made,) = result.asset_materializations_for_node("pitr__main")
    assert made.metadata["type"].value == "diff"

    (sensor,) = defs.sensors
    context = build_sensor_context(instance=instance, resources=resources)
    skipped = sensor.evaluate_tick(context).skip_message or ""
    assert "server main: archiving is healthy" in skipped
    assert "server quiet: point-in-time recovery is not set up" in skipped
    assert alerts_captured.posts("/hook") == []


def test_a_servers_stanza_refuses_another_cluster_named_for_it(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pgvault("pitr", "init", "--database", "alpha") == 0
    config = fleet.server.pitr_dir / "servers" / "main" / "pgbackrest.conf"
    first = config.read_text()
    with start_cluster() as other:
        with psycopg.connect(other.url.secret, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{fleet.dbnames["beta"]}"')
        monkeypatch.setenv("PGVAULT_TEST_MAIN_URL", other.url.secret)  # main, rebuilt
        code, _, err = printed(capsys, "pitr", "init", "--database", "beta")
    assert code == 2 and "stanza test-main archives another cluster" in err
    assert config.read_text() == first


def test_production_of_a_fleet_database_recovers_to_the_approved_time_and_spares_its_neighbour(
    fleet: Fleet, approvers, capsys: pytest.CaptureFixture[str]
) -> None:
    set_up_main(fleet)
    for name in ("alpha", "beta"):
        fleet.sql(name, "CREATE TABLE orders (id int PRIMARY KEY)")
        fleet.sql(name, "INSERT INTO orders SELECT generate_series(1, 3)")
    target = fleet.server.now().isoformat()
    for name in ("alpha", "beta"):
        fleet.sql(name, "INSERT INTO orders SELECT generate_series(4, 6)")
    fleet.server.switch_and_wait()
    request = (
        *("request-restore", "--kind", "restore-to-time", "--time", target),
        *("--target", "production", "--reason", "orders deleted"),
    )
    production = (
        *("restore-to-time", "--time", target, "--target", "production"),
        "--skip-confirmation",
    )

    code, _, err = printed(capsys, *request, "--database", "alpha")
    assert code == 1 and "staging does not hold a recovery" in err
    assert "run: pgvault restore-to-time --database alpha --time" in err
    code, _, err = printed(
        capsys,
        *("restore-to-time", "--database", "alpha", "--time", target, "--target", "staging"),
    )
    assert code == 0, err
    assert fleet.staging_rows("alpha") == [1, 2, 3]

    code, out, err = printed(capsys, *request, "--database", "alpha")
    assert code == 0, err
    request_id = out.splitlines()[0]
    assert f"into {fleet.dbnames['alpha']} (production, test/alpha)" in out
    assert f"approve-restore {request_id} --database alpha --key PATH" in out

    # beta's approvers, and beta's recovery, never see alpha's request.
    code, _, err = printed(
        capsys, "approve-restore", request_id, "--database", "beta", "--key", str(approvers.alice)
    )
    assert code == 1 and f"no request {request_id} in test/beta" in err
    for count, key in enumerate((approvers.alice, approvers.bob), start=1):
        code, out, err = printed(
            capsys, "approve-restore", request_id, "--database", "alpha", "--key", str(key)
        )
        assert code == 0, err
        assert f"{count} of 2 distinct approvals" in out
        if count == 1:
            code, _, err = printed(
                capsys, *production, "--database", "alpha", "--request", request_id
            )
            assert code == 1 and "it needs 2 distinct approvers" in err
            assert f"approve-restore {request_id} --database alpha --key PATH" in err
    code, _, err = printed(capsys, *production, "--database", "beta", "--request", request_id)
    assert code == 1 and f"no request {request_id} in test/beta" in err

    code, out, err = printed(capsys, *production, "--database", "alpha", "--request", request_id)
    assert code == 0, err
    assert f"swapped into the production database {fleet.dbnames['alpha']}" in out
    assert "pgvault rollback-restore --database alpha --target production" in out
    alpha_rows = fleet.server.sql(
        "SELECT id FROM orders ORDER BY id", dbname=fleet.dbnames["alpha"]
    )
    assert [row[0] for row in alpha_rows] == [1, 2, 3]
    beta_rows = fleet.server.sql("SELECT id FROM orders ORDER BY id", dbname=fleet.dbnames["beta"])
    assert [row[0] for row in beta_rows] == [1, 2, 3, 4, 5, 6]
    code, _, err = printed(capsys, *production, "--database", "alpha", "--request", request_id)
    assert code == 1 and "already executed" in err


def test_listing_every_database_shows_each_servers_window_once(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    set_up_main(fleet)
    fleet.server.hold_still()
    fleet.server.switch_and_wait()
    (status,) = WINDOW.findall(printed(capsys, "pitr", "status", "--database", "alpha")[1])

    code, out, err = printed(capsys, "list-backups")
    assert code == 0, err
    windows = [line for line in out.splitlines() if line.startswith("point-in-time window")]
    # main's window, as its status shows it; quiet archives nowhere, so it has none.
    assert windows == [f"point-in-time window of server main (alpha, beta): {status}"]
