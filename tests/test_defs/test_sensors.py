"""Alert sensors over a fake clock and a real instance: stale episodes, failed runs, warnings."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    build_schedule_context,
    build_sensor_context,
    materialize,
)

from pgvault_assets.definitions import defs
from pgvault_assets.defs.alerting import FleetCursor, make_alert_sensor
from pgvault_assets.defs.resources import AlertsResource, VaultResource, resource_defs
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.fleet import single_fleet
from pgvault_assets.settings import load_settings
from test_defs.backup_history import fake_manifest, write_backup, write_history
from test_defs.run_failure import sense_run_failure
from tests.test_defs.single import database_backup

RESOURCES = {"vault": VaultResource(), "alerts": AlertsResource()}


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _tick(sensor, instance, cursor):
    context = build_sensor_context(instance=instance, cursor=cursor, resources=RESOURCES)
    sensor.evaluate_tick(context)
    return context.cursor


def test_a_stale_episode_alerts_once_and_a_resumed_backup_sends_a_resolved_notice(
    local_env, instance, alerts_captured
):
    vault = Vault.from_settings(load_settings())
    (last,) = write_history(vault, date(2025, 6, 1), date(2025, 6, 1))
    clock = FakeClock(last.finished_at + timedelta(hours=35))
    sensor = make_alert_sensor(single_fleet(), clock)

    cursor = _tick(sensor, instance, None)
    assert alerts_captured.posts("/hook") == []

    clock.now = last.finished_at + timedelta(hours=37)
    cursor = _tick(sensor, instance, cursor)
    clock.now += timedelta(hours=6)
    cursor = _tick(sensor, instance, cursor)
    stale = [p for p in alerts_captured.posts("/hook") if p["alert"] == "backup_stale"]
    assert len(stale) == 1 and stale[0]["level"] == "fatal"

    write_backup(vault, fake_manifest("test", date(2025, 6, 3)))
    clock.now = fake_manifest("test", date(2025, 6, 3)).finished_at + timedelta(hours=1)
    cursor = _tick(sensor, instance, cursor)
    cursor = _tick(sensor, instance, cursor)
    kinds = [p["alert"] for p in alerts_captured.posts("/hook")]
    assert kinds == ["backup_stale", "backup_stale_resolved"]
    (event,) = [e for e in alerts_captured.events() if e["tags"]["alert"] == "backup_stale"]
    assert event["level"] == "fatal"


def test_staleness_is_measured_from_the_newest_backups_own_finish_time(
    local_env, instance, alerts_captured
):
    vault = Vault.from_settings(load_settings())
    write_backup(vault, fake_manifest("test", date(2025, 6, 1)))
    # Written today, but the backup inside finished long ago: the store's mtime must not count.
    sensor = make_alert_sensor(single_fleet(), FakeClock(datetime(2025, 6, 10, tzinfo=UTC)))
    _tick(sensor, instance, None)
    assert [p["alert"] for p in alerts_captured.posts("/hook")] == ["backup_stale"]


def test_a_failed_backup_run_alerts_critically_whatever_job_launched_it(
    local_env, instance, alerts_captured, yesterday
):
    # No DATABASE_URL: the backup fails for real (not refused), without waiting on retries.
    result = materialize(
        [database_backup],
        instance=instance,
        resources=resource_defs(),
        partition_key=yesterday.isoformat(),
        raise_on_error=False,
    )
    run = instance.get_run_by_id(result.run_id)
    assert run.job_name == "__ephemeral_asset_job__"
    assert sense_run_failure(instance, result.run_id)

    (post,) = alerts_captured.posts("/hook")
    assert post["alert"] == "backup_failed" and post["level"] == "fatal"
    assert "DATABASE_URL is not set" in post["text"]


def test_a_backup_run_stopped_by_run_monitoring_alerts_with_why(
    local_env, instance, alerts_captured
):
    """No step failed: the run was over its runtime and run monitoring failed it, with the
    message Dagster's run monitoring writes. The alert says so, not just "see the run"."""
    job = defs.resolve_job_def("daily_backup_job")
    run = instance.create_run_for_job(job, tags={"dagster/partition": "2026-03-14"})
    instance.report_run_failed(run, "Exceeded maximum runtime of 21600 seconds.")

    assert sense_run_failure(instance, run.run_id)
    (post,) = alerts_captured.posts("/hook")
    assert post["alert"] == "backup_failed"
    assert "backup step ended: Exceeded maximum runtime of 21600 seconds." in post["text"]


def test_a_refused_backfill_raises_no_failure_alert(
    local_env, instance, alerts_captured, yesterday
):
    result = materialize(
        [database_backup],
        instance=instance,
        resources=resource_defs(),
        partition_key=(yesterday - timedelta(days=5)).isoformat(),
        raise_on_error=False,
    )
    assert sense_run_failure(instance, result.run_id)
    assert alerts_captured.posts("/hook") == []


def test_a_failed_backup_run_of_another_environment_alerts_there_not_here(
    local_env, instance, alerts_captured, yesterday, monkeypatch
):
    """Environments may share a Dagster instance; each alerts only its own failed runs."""
    with monkeypatch.context() as other:
        other.setenv("ENVIRONMENT_NAME", "other")
        result = materialize(
            [database_backup],
            instance=instance,
            resources=resource_defs(),
            partition_key=yesterday.isoformat(),
            raise_on_error=False,
        )
    assert sense_run_failure(instance, result.run_id)
    assert alerts_captured.posts("/hook") == []

    monkeypatch.setenv("ENVIRONMENT_NAME", "other")
    assert sense_run_failure(instance, result.run_id)
    assert [post["alert"] for post in alerts_captured.posts("/hook")] == ["backup_failed"]


def test_storage_over_budget_warns_once_until_it_clears(
    local_env, instance, alerts_captured, monkeypatch
):
    vault = Vault.from_settings(load_settings())
    write_history(vault, date(2025, 5, 1), date(2025, 5, 31), size_bytes=1000)
    monkeypatch.setenv("BACKUP_STORAGE_BUDGET_BYTES", "20000")
    clock = FakeClock(datetime(2025, 6, 1, 3, tzinfo=UTC))
    sensor = make_alert_sensor(single_fleet(), clock)

    cursor = _tick(sensor, instance, None)
    cursor = _tick(sensor, instance, cursor)
    assert [p["alert"] for p in alerts_captured.posts("/hook")] == ["storage_over_budget"]
    assert FleetCursor.parse(cursor).over_budget

    monkeypatch.setenv("BACKUP_STORAGE_BUDGET_BYTES", "10000000")
    clock.now += timedelta(hours=1)  # the next hourly pass
    assert not FleetCursor.parse(_tick(sensor, instance, cursor)).over_budget


def test_backups_and_alerts_are_on_from_the_moment_pgvault_is_installed():
    repository = defs.get_repository_def()
    assert (
        repository.get_schedule_def("daily_backup_schedule").default_status
        == DefaultScheduleStatus.RUNNING
    )
    sensor = repository.get_sensor_def("backup_alert_sensor")
    assert sensor.default_status == DefaultSensorStatus.RUNNING


def test_the_daily_schedule_backs_up_the_day_before_at_two_utc():
    schedule = defs.get_repository_def().get_schedule_def("daily_backup_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 2 * * *", "UTC")
    with build_schedule_context(
        scheduled_execution_time=datetime(2025, 6, 10, 2, 0, tzinfo=UTC)
    ) as schedule_context:
        (request,) = schedule.evaluate_tick(schedule_context).run_requests
    assert request.partition_key == "2025-06-09"


def test_the_daily_schedule_gives_a_large_databases_run_three_times_its_longest_backup(
    local_env,
):
    vault = Vault.from_settings(load_settings())
    write_history(vault, date(2025, 6, 1), date(2025, 6, 8), duration_seconds=5 * 3600)
    schedule = defs.get_repository_def().get_schedule_def("daily_backup_schedule")

    with build_schedule_context(
        scheduled_execution_time=datetime(2025, 6, 10, 2, 0, tzinfo=UTC)
    ) as schedule_context:
        (request,) = schedule.evaluate_tick(schedule_context).run_requests

    assert request.partition_key == "2025-06-09"
    assert request.tags["dagster/max_runtime"] == str(3 * 5 * 3600)
