"""Failed runs as the health figures count them: only their own environment's and database's.

Two environments share one Dagster instance here, as they do on a shared daemon; each test
asserts on runs it created in its own temporary instance.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance, build_schedule_context, materialize

from pgvault_assets.cli import main
from pgvault_assets.cli.platform import materialize_backup
from pgvault_assets.definitions import defs
from pgvault_assets.defs.history import (
    DATABASE_TAG,
    ENVIRONMENT_TAG,
    PARTITION_TAG,
    backup_run_tags,
    failed_backup_runs,
)
from pgvault_assets.defs.naming import BACKUP_KEY
from pgvault_assets.defs.resources import resource_defs
from pgvault_assets.engine.basics.clock import utcnow
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import BackupFailed
from pgvault_assets.fleet import Fleet, FleetDatabase, Server
from pgvault_assets.settings import load_settings
from test_defs.backup_history import fake_manifest, write_backup, write_history
from tests.test_defs.single import database_backup
from tests.test_fleet.helpers import run_requests

SINCE = datetime(2000, 1, 1, tzinfo=UTC)


def _fail_backups_in(environment: str, times: int, monkeypatch, yesterday) -> None:
    """Backups of `environment` that fail for real in the run: no DATABASE_URL is set."""
    with monkeypatch.context() as other:
        other.setenv("ENVIRONMENT_NAME", environment)
        other.delenv("DATABASE_URL", raising=False)
        with DagsterInstance.get() as instance:
            for _ in range(times):
                with pytest.raises(BackupFailed, match="DATABASE_URL is not set"):
                    materialize_backup(yesterday, instance=instance, settings=load_settings())


def test_failed_runs_of_another_environment_do_not_lower_this_ones_success_rate_or_fail_status(
    local_env, monkeypatch, yesterday, capsys
):
    vault = Vault.from_settings(load_settings())
    write_history(vault, yesterday - timedelta(days=29), yesterday - timedelta(days=1))
    latest = fake_manifest(vault.environment, yesterday)
    finished = utcnow() - timedelta(hours=1)
    write_backup(vault, dataclasses.replace(latest, started_at=finished, finished_at=finished))
    _fail_backups_in("other", 3, monkeypatch, yesterday)

    assert main(["status"]) == 0
    assert "100.0% (30 ok, 0 failed)" in capsys.readouterr().out

    # The other environment's own figures do count its failures.
    monkeypatch.setenv("ENVIRONMENT_NAME", "other")
    assert main(["status"]) == 1
    assert "(0 ok, 3 failed)" in capsys.readouterr().out


def test_a_canceled_backup_run_does_not_count_as_failed(local_env, instance):
    job = defs.resolve_job_def("daily_backup_job")
    tags = {PARTITION_TAG: "2026-03-14", **backup_run_tags("test", None)}
    canceled = instance.create_run_for_job(job, tags=tags)
    instance.report_run_canceled(canceled, "interrupted by the operator")
    failed = instance.create_run_for_job(job, tags=tags)
    instance.report_run_failed(failed, "Exceeded maximum runtime of 21600 seconds.")

    (counted,) = failed_backup_runs(instance, BACKUP_KEY, SINCE, environment="test", database=None)
    assert "Exceeded maximum runtime" in counted.reason


def test_a_failed_run_of_another_database_or_without_our_tags_counts_for_no_one(
    local_env, instance
):
    job = defs.resolve_job_def("daily_backup_job")
    for tags in ({}, backup_run_tags("test", "billing"), backup_run_tags("other", None)):
        run = instance.create_run_for_job(job, tags={PARTITION_TAG: "2026-03-14", **tags})
        instance.report_run_failed(run, "Exceeded maximum runtime of 21600 seconds.")

    assert failed_backup_runs(instance, BACKUP_KEY, SINCE, environment="test", database=None) == []


def test_a_backup_launched_without_our_tags_tags_its_own_run(local_env, instance, yesterday):
    """The UI and backfills launch runs without pgvault's tags; the backup step adds them."""
    result = materialize(
        [database_backup],
        instance=instance,
        resources=resource_defs(),
        partition_key=yesterday.isoformat(),
        raise_on_error=False,
    )

    tags = instance.get_run_by_id(result.run_id).tags
    assert tags[ENVIRONMENT_TAG] == "test" and tags[DATABASE_TAG] == "default"
    (counted,) = failed_backup_runs(instance, BACKUP_KEY, SINCE, environment="test", database=None)
    assert "DATABASE_URL is not set" in counted.reason


def test_scheduled_runs_carry_their_environment_and_database(local_env, instance):
    schedule = defs.get_repository_def().get_schedule_def("daily_backup_schedule")
    moment = datetime(2026, 3, 15, 2, tzinfo=UTC)
    with build_schedule_context(instance=instance, scheduled_execution_time=moment) as context:
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.tags[ENVIRONMENT_TAG] == "test" and request.tags[DATABASE_TAG] == "default"

    alpha = FleetDatabase(name="alpha", server="main", dbname="alpha_db")
    main = Server(name="main", url_env="MAIN_URL")
    fleet = Fleet(servers=(main,), databases=(alpha,), source=Path("fleet.yaml"))
    (fleet_request,) = run_requests(fleet, moment, "test")
    assert fleet_request.tags[ENVIRONMENT_TAG] == "test"
    assert fleet_request.tags[DATABASE_TAG] == "alpha"
