"""The restorable check proves a backup on a server of its own, never on the backed-up one."""

from __future__ import annotations

from dagster import materialize

from pgvault_assets.defs.resources import resource_defs
from pgvault_assets.fleet import RESTORE_PROOF_POOL
from test_defs.conftest import watching
from tests.conftest import PG_SERVER_URL
from tests.test_defs.single import database_backup, restorable
from tests.test_recovery.conftest import databases_named


def _prove(instance, day):
    result = materialize(
        [database_backup, restorable],
        instance=instance,
        resources=resource_defs(),
        partition_key=day.isoformat(),
    )
    assert result.success
    (evaluation,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "restorable"
    ]
    return evaluation


def test_without_a_configured_server_the_proof_restores_onto_a_throwaway_cluster_only(
    private_production, instance, yesterday, own_tempdir
):
    before = private_production.databases()

    with watching(private_production.server_url) as seen:
        evaluation = _prove(instance, yesterday)

    assert evaluation.passed
    assert evaluation.metadata["restore_verified"].value is True
    assert (
        evaluation.metadata["server"].value == "a throwaway PostgreSQL cluster, removed afterwards"
    )
    assert seen.databases == before  # not even for a moment: no proof database on production
    assert private_production.databases() == before
    assert len(seen.clusters) == 1  # the proof's own cluster, started and then removed
    assert not any(path.exists() for path in seen.clusters)


def test_restore_check_database_url_is_the_server_the_proof_restores_onto(
    private_production, make_database, instance, yesterday, monkeypatch, own_tempdir
):
    configured = make_database("proof")
    monkeypatch.setenv("RESTORE_CHECK_DATABASE_URL", configured)
    before = private_production.databases()

    with (
        watching(PG_SERVER_URL + "/postgres") as on_configured,
        watching(private_production.server_url) as on_production,
    ):
        evaluation = _prove(instance, yesterday)

    assert evaluation.passed
    proof_database = evaluation.metadata["server"].value.rsplit("/", 1)[1]
    assert evaluation.metadata["server"].value == f"{PG_SERVER_URL}/{proof_database}"
    assert proof_database.startswith("pgvault_verify_")
    assert proof_database in on_configured.databases  # restored there while the check ran
    assert not databases_named(proof_database)  # and dropped afterwards
    assert on_production.databases == before
    assert on_production.clusters == set()


def test_the_check_runs_in_the_restore_proof_pool():
    assert restorable.op.pool == RESTORE_PROOF_POOL
