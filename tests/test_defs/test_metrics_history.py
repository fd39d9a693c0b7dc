"""`pgvault_alerts_open` for the episodes only Dagster's history holds: failed backup runs,
failed checks and the success rate, read from the instance the CLI's backups ran in."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from pgvault_assets.cli import main
from pgvault_assets.definitions import defs
from pgvault_assets.defs.naming import BACKUP_KEY
from pgvault_assets.defs.resources import resource_defs
from pgvault_assets.defs.run_episodes import HISTORY_KINDS, RunHistoryReader
from pgvault_assets.engine.basics.clock import utcnow
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.settings import load_settings
from test_defs.backup_history import write_history
from test_defs.test_backup_asset import CorruptingVaultResource
from tests.conftest import PG_SERVER_URL
from tests.test_defs.single import database_backup
from tests.test_fleet.helpers import write_fleet
from tests.test_metrics import samples


def open_alerts(tmp_path: Path, database: str = "default") -> dict[str, float]:
    """`pgvault metrics write`'s `pgvault_alerts_open` of `database`, by kind."""
    target = tmp_path / "pgvault.prom"
    assert main(["metrics", "write", str(target)]) == 0
    prefix = f'database="{database}",environment="test",kind="'
    return {
        labels[len(prefix) : -1]: value
        for (name, labels), value in samples(target.read_text()).items()
        if name == "pgvault_alerts_open" and labels.startswith(prefix)
    }


def absent(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/pgvault_test_absent"


def test_without_any_run_the_history_kinds_are_zero_not_missing(backup_env, tmp_path, monkeypatch):
    """No DAGSTER_HOME: the embedded instance, which has never run anything."""
    monkeypatch.delenv("DAGSTER_HOME")

    found = open_alerts(tmp_path)

    assert {kind: found.get(kind) for kind in HISTORY_KINDS} == dict.fromkeys(HISTORY_KINDS, 0)


def test_a_failed_backup_run_opens_backup_failed_for_its_database_until_one_succeeds(
    local_env, make_database, tmp_path, monkeypatch
):
    urls = {name: make_database(name) for name in ("alpha", "beta")}
    servers = {"main": (f"{PG_SERVER_URL}/postgres", 2)}
    dbnames = {name: url.rsplit("/", 1)[1] for name, url in urls.items()}
    write_fleet(
        local_env,
        monkeypatch,
        servers,
        {"alpha": ("main", "pgvault_test_absent"), "beta": ("main", dbnames["beta"])},
    )
    assert main(["backup", "--database", "alpha", "--retries", "0"]) != 0
    assert main(["backup", "--database", "beta", "--retries", "0"]) == 0

    alpha, beta = open_alerts(tmp_path, "alpha"), open_alerts(tmp_path, "beta")
    assert alpha["backup_failed"] == 1 and alpha["upload_failing"] == 0
    assert beta["backup_failed"] == 0

    write_fleet(local_env, monkeypatch, servers, {n: ("main", d) for n, d in dbnames.items()})
    assert main(["backup", "--database", "alpha", "--retries", "0"]) == 0

    assert open_alerts(tmp_path, "alpha")["backup_failed"] == 0


def test_a_served_reading_follows_new_runs_and_reads_none_when_none_ended(backup_env, monkeypatch):
    """`metrics serve` keeps one reader: after its first reading it reads only the runs that
    ended since, and a failure then a success open and close the episode."""
    with DagsterInstance.get() as instance:
        reader = RunHistoryReader(instance, "test", {BACKUP_KEY: "default"}, timedelta(0))
        today = utcnow().date()

        assert reader.read(utcnow()).open_alerts("default", (), today)["backup_failed"] == 0
        monkeypatch.setenv("DATABASE_URL", absent(backup_env))
        assert main(["backup", "--retries", "0"]) != 0
        assert reader.read(utcnow()).open_alerts("default", (), today)["backup_failed"] == 1
        read = reader.runs_read
        assert reader.read(utcnow()).open_alerts("default", (), today)["backup_failed"] == 1
        assert reader.runs_read == read  # nothing ended: no run read again

        monkeypatch.setenv("DATABASE_URL", backup_env)
        assert main(["backup", "--retries", "0"]) == 0
        assert reader.read(utcnow()).open_alerts("default", (), today)["backup_failed"] == 0
        assert reader.runs_read == read + 1


def test_a_failed_decryption_check_opens_decrypts_fully_and_a_passing_one_closes_it(
    backup_env, yesterday, tmp_path
):
    assert main(["backup", "--retries", "0"]) == 0
    vault = Vault.from_settings(load_settings())
    path = vault.store.root / vault.object_key(yesterday)  # type: ignore[attr-defined]
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    checks = defs.resolve_job_def("backup_checks_job")
    tags = {"dagster/partition": yesterday.isoformat()}
    with DagsterInstance.get() as instance:
        result = checks.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    assert not {e.check_name: e for e in result.get_asset_check_evaluations()}[
        "decrypts_fully"
    ].passed

    found = open_alerts(tmp_path)
    assert found["decrypts_fully"] == 1
    assert found["backup_failed"] == 0 and found["checksum_mismatch"] == 0

    path.write_bytes(good)
    with DagsterInstance.get() as instance:
        result = checks.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    assert {e.check_name: e for e in result.get_asset_check_evaluations()}["decrypts_fully"].passed

    assert open_alerts(tmp_path)["decrypts_fully"] == 0


def test_a_backup_whose_checksum_check_fails_opens_checksum_mismatch_and_backup_failed(
    backup_env, yesterday, tmp_path
):
    """The blocking checksum check fails the run too: both episodes open, as both alert."""
    with DagsterInstance.get() as instance:
        result = materialize(
            [database_backup],
            instance=instance,
            resources={**resource_defs(), "vault": CorruptingVaultResource()},
            partition_key=yesterday.isoformat(),
            raise_on_error=False,
        )
    assert not result.success

    found = open_alerts(tmp_path)
    assert found["checksum_mismatch"] == 1 and found["backup_failed"] == 1
    assert found["decrypts_fully"] == 0


@pytest.mark.parametrize("failures, low", [(2, 1), (0, 0)])
def test_failed_runs_beside_the_stored_backups_set_success_rate_low(
    backup_env, yesterday, tmp_path, monkeypatch, failures, low
):
    """20 stored backups and 2 failed runs: 91%, under the 95% floor; none failed: 100%."""
    write_history(
        Vault.from_settings(load_settings()),
        yesterday - timedelta(days=20),
        yesterday - timedelta(days=1),
    )
    monkeypatch.setenv("DATABASE_URL", absent(backup_env))
    for _ in range(failures):
        assert main(["backup", "--retries", "0"]) != 0

    assert open_alerts(tmp_path)["success_rate_low"] == low
