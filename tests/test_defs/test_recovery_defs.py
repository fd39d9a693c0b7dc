"""The drill asset, its objective check and quarterly schedule, and restores from the launchpad."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from dagster import AssetCheckSeverity, RunRequest, SkipReason, build_schedule_context, materialize

from pgvault_assets.defs.recovery import (
    RECOVERY_TIME_WITHIN_OBJECTIVE,
    quarterly_drill_schedule,
    restore_job,
)
from pgvault_assets.defs.resources import resource_defs
from pgvault_assets.engine.approvals.audit import STAGING_RESTORE, audit_records
from pgvault_assets.engine.basics.clock import utcnow
from pgvault_assets.fleet import RESTORE_PROOF_POOL
from test_defs.conftest import watching
from tests.dbcompare import database_snapshot
from tests.test_defs.single import disaster_recovery_drill
from tests.test_engine.helpers import DAY, back_up, vault
from tests.test_recovery.conftest import Approvers, Databases
from tests.test_recovery.helpers import approved_request


@pytest.fixture(autouse=True)
def no_recovery_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own approvers file or drill queries must not reach these tests."""
    for name in ("RESTORE_APPROVERS_FILE", "RESTORE_REQUEST_TTL_HOURS", "DRILL_QUERIES_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def drill_env(local_env, awkward_database, monkeypatch) -> str:
    """Last month's 1st backed up; the drill restores on a throwaway cluster of its own."""
    monkeypatch.setenv("DATABASE_URL", awkward_database)
    last_month = (utcnow().date().replace(day=1) - timedelta(days=1)).replace(day=1)
    back_up(awkward_database, day=last_month)
    return awkward_database


def drill_check(result):
    (evaluation,) = [
        e
        for e in result.get_asset_check_evaluations()
        if e.check_name == RECOVERY_TIME_WITHIN_OBJECTIVE
    ]
    return evaluation


def test_drill_materializes_its_report_and_passes_the_objective_check(drill_env, instance):
    result = materialize([disaster_recovery_drill], instance=instance, resources=resource_defs())

    assert result.success
    metadata = result.asset_materializations_for_node("disaster_recovery_drill")[0].metadata
    assert "**Result: PASSED**" in metadata["report"].value
    assert {"verify_seconds", "restore_seconds", "integrity_seconds", "queries_seconds"} <= set(
        metadata
    )
    assert 0 < metadata["scaled_recovery_seconds"].value < 4 * 3600
    assert metadata["recovery_time_objective_seconds"].value == 4 * 3600
    stored = vault().store.get_bytes(metadata["report_key"].value).decode()
    assert "**Result: PASSED**" in stored
    check = drill_check(result)
    assert check.passed and check.severity == AssetCheckSeverity.ERROR


def test_drill_restores_on_a_throwaway_cluster_and_never_on_production(
    private_production, instance, own_tempdir
):
    last_month = (utcnow().date().replace(day=1) - timedelta(days=1)).replace(day=1)
    back_up(private_production.url, day=last_month)
    before = private_production.databases()

    with watching(private_production.server_url) as seen:
        result = materialize(
            [disaster_recovery_drill], instance=instance, resources=resource_defs()
        )

    assert result.success
    assert drill_check(result).passed
    assert seen.databases == before
    assert len(seen.clusters) == 1 and not any(path.exists() for path in seen.clusters)


def test_the_drill_runs_in_the_restore_proof_pool():
    assert disaster_recovery_drill.op.pool == RESTORE_PROOF_POOL


def test_drill_check_fails_when_the_objective_is_missed(drill_env, instance):
    result = materialize(
        [disaster_recovery_drill],
        instance=instance,
        resources=resource_defs(),
        run_config={
            "ops": {"disaster_recovery_drill": {"config": {"recovery_time_objective_hours": 1e-9}}}
        },
    )

    check = drill_check(result)
    assert not check.passed and check.severity == AssetCheckSeverity.ERROR
    assert "MISSES the" in check.description
    metadata = result.asset_materializations_for_node("disaster_recovery_drill")[0].metadata
    assert "**Result: FAILED**" in metadata["report"].value


def test_drill_schedule_fires_only_on_the_first_monday_of_each_quarter():
    fired, skipped = [], []
    for offset in range(365):
        tick = datetime(2026, 1, 1, 10, tzinfo=UTC) + timedelta(days=offset)
        result = quarterly_drill_schedule(build_schedule_context(scheduled_execution_time=tick))
        (fired if isinstance(result, RunRequest) else skipped).append(tick.date())
        assert isinstance(result, RunRequest | SkipReason)

    assert quarterly_drill_schedule.cron_schedule == "0 10 1-7 1,4,7,10 *"
    assert quarterly_drill_schedule.execution_timezone == "UTC"
    assert fired == [date(2026, 1, 5), date(2026, 4, 6), date(2026, 7, 6), date(2026, 10, 5)]
    # 1 June 2026 is a Monday in days 1-7, but not of a quarter's first month.
    assert date(2026, 6, 1) in skipped and date(2026, 1, 1) in skipped


def run_restore_job(instance, **config):
    """The launchpad's restore job of DAY (unless `config` says otherwise) with `config`."""
    return restore_job.execute_in_process(
        run_config={
            "ops": {"restore_from_backup": {"config": {"date": DAY.isoformat(), **config}}}
        },
        resources=resource_defs(),
        instance=instance,
        raise_on_error=False,
    )


def failure_of(result) -> str:
    """Why the run failed: its one step failure's description."""
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.user_failure_data.description


def test_restore_job_restores_the_chosen_date_to_staging_and_records_it(
    local_env, awkward_database, make_database, monkeypatch, instance
):
    staging = make_database("staging")
    monkeypatch.setenv("DATABASE_URL", awkward_database)
    monkeypatch.setenv("STAGING_DATABASE_URL", staging)
    manifest = back_up(awkward_database, day=DAY)

    result = run_restore_job(instance)

    assert result.success
    assert database_snapshot(staging) == database_snapshot(awkward_database)
    (record,) = [r for r in audit_records(vault(), "staging") if r.record == STAGING_RESTORE]
    assert record.body["sha256"] == manifest.sha256
    assert record.body["date"] == DAY.isoformat()


def test_restore_job_refuses_production_without_a_request_and_leaves_it_untouched(
    local_env, awkward_database, monkeypatch, instance
):
    monkeypatch.setenv("DATABASE_URL", awkward_database)
    back_up(awkward_database, day=DAY)
    before = database_snapshot(awkward_database)

    result = run_restore_job(instance, target="production")

    assert "restoring to production needs an approved request" in failure_of(result)
    assert database_snapshot(awkward_database) == before


def test_restore_job_refuses_staging_that_is_production_by_another_name(
    local_env, awkward_database, monkeypatch, instance
):
    monkeypatch.setenv("DATABASE_URL", awkward_database)
    monkeypatch.setenv("STAGING_DATABASE_URL", awkward_database.replace("127.0.0.1", "localhost"))
    back_up(awkward_database, day=DAY)
    before = database_snapshot(awkward_database)

    result = run_restore_job(instance)

    assert "STAGING_DATABASE_URL and DATABASE_URL reach the same database" in failure_of(result)
    assert database_snapshot(awkward_database) == before
    assert audit_records(vault(), "staging") == []


def test_a_bad_date_is_refused_in_one_line(local_env, instance):
    result = run_restore_job(instance, date="2026-13-01")

    assert "is not a date; use YYYY-MM-DD" in failure_of(result)


def mark_production(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.written_after_the_backup (id int)")


def sentinel_present(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('public.written_after_the_backup')").fetchone()
    return row is not None and row[0] is not None


def test_restore_job_refuses_production_with_a_single_approval(
    databases: Databases, approvers: Approvers, capsys, instance
):
    request_id = approved_request(capsys, approvers.alice)
    mark_production(databases.production)

    result = run_restore_job(instance, target="production", request_id=request_id)

    assert "needs 2 distinct approvers" in failure_of(result)
    assert sentinel_present(databases.production)


def test_restore_job_restores_production_under_a_dual_approved_request(
    databases: Databases, approvers: Approvers, capsys, instance
):
    request_id = approved_request(capsys, approvers.alice, approvers.bob)
    mark_production(databases.production)

    result = run_restore_job(instance, target="production", request_id=request_id)

    assert result.success
    assert not sentinel_present(databases.production)
