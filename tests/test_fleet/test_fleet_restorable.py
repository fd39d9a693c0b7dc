"""Each fleet database's restore proof: run by its scheduled run, daily or weekly as its
fleet file says, and a corrupted backup of one database a warning of that database alone."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta

import pytest
import yaml
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    Definitions,
)

from pgvault_assets.cli import main
from pgvault_assets.defs.resources import resource_defs
from pgvault_assets.engine.backup.backup import backup_database
from pgvault_assets.engine.basics.clock import latest_complete_day, utcnow
from pgvault_assets.engine.recovery.restore_check import restore_verified_dates
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.fleet import RESTORE_PROOF_POOL, load_fleet, pin_database
from pgvault_assets.settings import load_settings
from tests.test_fleet.helpers import alpha_and_beta, backup_definitions, run_requests
from tests.test_recovery.conftest import databases_named

SATURDAY = date(2026, 3, 14)
SUNDAY = date(2026, 3, 15)


@pytest.fixture
def fleet_of_two(local_env, make_database, monkeypatch):
    """alpha and beta on one server, each with a table; proofs go to RESTORE_CHECK_DATABASE_URL's
    server (cheap: no throwaway cluster). Returns the fleet file's path."""
    monkeypatch.setenv("RESTORE_CHECK_DATABASE_URL", make_database("proof"))
    _, path = alpha_and_beta(local_env, monkeypatch, make_database)
    return path


def _defs() -> Definitions:
    fleet = load_fleet(load_settings().platform.fleet_file)
    return Definitions.merge(backup_definitions(fleet), Definitions(resources=resource_defs()))


def _vault(name: str) -> Vault:
    return Vault.from_settings(pin_database(load_settings(), os.environ, name))


def _back_up(name: str, day: date) -> None:
    """The backup of `day`, taken as the morning after would take it."""
    settings = pin_database(load_settings(), os.environ, name)
    morning = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC) + timedelta(
        hours=2
    )
    backup_database(
        Vault.from_settings(settings), settings.require_database(), day, now=lambda: morning
    )


def _flip_byte(vault: Vault, day: date) -> None:
    path = vault.store.root / vault.object_key(day)  # type: ignore[attr-defined]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _run_checks(instance, day: date) -> dict[tuple[str, str], object]:
    """The fleet's stored-backup checks job on `day`: each (database, check)'s evaluation."""
    result = (
        _defs()
        .resolve_job_def("fleet_backup_checks_job")
        .execute_in_process(
            instance=instance, tags={"dagster/partition": day.isoformat()}, raise_on_error=False
        )
    )
    return {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}


def test_each_database_has_a_restorable_check_in_the_restore_proof_pool(fleet_of_two):
    defs = _defs()

    for name in ("alpha", "beta"):
        check = defs.get_asset_checks_def(AssetCheckKey(AssetKey(["backup", name]), "restorable"))
        assert check.node_def.pool == RESTORE_PROOF_POOL
        assert check.partitions_def is not None


def test_the_scheduled_run_of_a_database_proves_its_backup_restores(fleet_of_two, instance):
    day = latest_complete_day(utcnow())
    (request, _) = run_requests(
        load_fleet(load_settings().platform.fleet_file),
        datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC),
        "test",
    )
    job = _defs().resolve_job_def("fleet_backup_job")

    result = job.execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        asset_selection=request.asset_selection,
    )

    assert result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    proof = evaluations["restorable"]
    assert proof.asset_key == AssetKey(["backup", "alpha"]) and proof.passed
    assert proof.metadata["restore_verified"].value is True
    assert proof.metadata["tables"].value == 1
    proof_database = proof.metadata["server"].value.rsplit("/", 1)[1]
    assert proof_database.startswith("pgvault_verify_") and not databases_named(proof_database)
    assert day in restore_verified_dates(_vault("alpha"))
    assert restore_verified_dates(_vault("beta")) == {}


def test_a_corrupted_backup_of_one_database_warns_for_that_database_alone(fleet_of_two, instance):
    for name in ("alpha", "beta"):
        _back_up(name, SATURDAY)
    _flip_byte(_vault("beta"), SATURDAY)

    evaluations = _run_checks(instance, SATURDAY)

    assert evaluations["alpha", "restorable"].passed
    assert evaluations["alpha", "decrypts_fully"].passed
    broken = evaluations["beta", "restorable"]
    assert not broken.passed and broken.severity == AssetCheckSeverity.WARN
    assert not evaluations["beta", "decrypts_fully"].passed
    assert set(restore_verified_dates(_vault("alpha"))) == {SATURDAY}
    assert restore_verified_dates(_vault("beta")) == {}


def test_a_weekly_restore_proof_restores_sunday_backups_only(fleet_of_two, instance):
    """alpha's fleet entry says weekly; beta follows RESTORE_VERIFY_SCHEDULE (daily)."""
    document = yaml.safe_load(fleet_of_two.read_text())
    document["databases"][0]["restore_proof"] = "weekly"
    fleet_of_two.write_text(yaml.safe_dump(document))
    for day in (SATURDAY, SUNDAY):
        for name in ("alpha", "beta"):
            _back_up(name, day)

    saturday = _run_checks(instance, SATURDAY)
    sunday = _run_checks(instance, SUNDAY)

    skipped = saturday["alpha", "restorable"]
    assert skipped.passed and skipped.metadata["restore_verified"].value is False
    assert "Sunday backups only" in skipped.description
    assert saturday["beta", "restorable"].metadata["restore_verified"].value is True
    assert sunday["alpha", "restorable"].metadata["restore_verified"].value is True
    assert set(restore_verified_dates(_vault("alpha"))) == {SUNDAY}
    assert set(restore_verified_dates(_vault("beta"))) == {SATURDAY, SUNDAY}


def test_backup_prove_restorable_proves_the_named_database(fleet_of_two, capsys):
    assert main(["backup", "--database", "beta", "--prove-restorable"]) == 0

    assert set(restore_verified_dates(_vault("beta"))) == {latest_complete_day(utcnow())}
    assert restore_verified_dates(_vault("alpha")) == {}
