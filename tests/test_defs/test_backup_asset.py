"""The backup asset on real PostgreSQL: metadata, checks, the backfill refusal, corruption."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

import pytest
from dagster import (
    AssetCheckKey,
    AssetCheckSeverity,
    Backoff,
    Jitter,
    build_sensor_context,
    materialize,
)

from pgvault_assets.definitions import defs
from pgvault_assets.defs.alerting import make_alert_sensor
from pgvault_assets.defs.history import failed_backup_runs
from pgvault_assets.defs.naming import BACKUP_KEY
from pgvault_assets.defs.resources import AlertsResource, VaultResource, resource_defs
from pgvault_assets.engine.basics.clock import utcnow
from pgvault_assets.engine.basics.names import OBJECT_NAME
from pgvault_assets.engine.recovery.restore_check import restore_verified_dates
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.fleet import single_fleet
from pgvault_assets.settings import Settings, load_settings
from test_defs.backup_history import fake_manifest, write_backup
from test_defs.run_failure import sense_from_start
from tests.test_defs.single import database_backup, decrypts_fully, restorable

ALL = [database_backup, decrypts_fully, restorable]


def _flip_byte(vault: Vault, key: str) -> None:
    path = vault.store.root / key  # type: ignore[attr-defined]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


class CorruptingVaultResource(VaultResource):
    """A store whose disk flips a byte of the backup object right after it is written."""

    def vault(self, settings: Settings | None = None) -> Vault:
        vault = super().vault(settings)
        store = vault.store
        open_writer = store.open_writer

        def corrupting_writer(key: str, **options):
            writer = open_writer(key, **options)
            commit = writer.commit

            def commit_then_corrupt():
                version = commit()
                if key.endswith(OBJECT_NAME):
                    _flip_byte(vault, key)
                return version

            writer.commit = commit_then_corrupt
            return writer

        store.open_writer = corrupting_writer  # type: ignore[method-assign]
        return vault


def test_materializing_yesterday_records_metadata_and_passes_every_check(
    backup_env, instance, yesterday
):
    result = materialize(
        ALL, instance=instance, resources=resource_defs(), partition_key=yesterday.isoformat()
    )

    assert result.success
    (materialization,) = result.asset_materializations_for_node("database_backup")
    metadata = materialization.metadata
    assert len(metadata["sha256"].value) == 64
    for key in ("size_bytes", "dump_size_bytes", "row_total"):
        assert isinstance(metadata[key].value, int) and metadata[key].value > 0
    for key in ("duration_seconds", "compression_ratio", "total_seconds"):
        assert isinstance(metadata[key].value, float)
    assert metadata["object_location"].value.endswith(
        f"test/{yesterday.isoformat()}/db_backup.sql.gz.enc"
    )
    assert metadata["server_version"].value.startswith("PostgreSQL")
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {
        "checksum_matches",
        "decrypts_fully",
        "duration_within_average",
        "size_not_shrunk",
        "restorable",
    }
    assert all(e.passed for e in evaluations.values())
    assert evaluations["checksum_matches"].severity == AssetCheckSeverity.ERROR
    assert evaluations["restorable"].metadata["row_total"].value == metadata["row_total"].value
    assert yesterday in restore_verified_dates(Vault.from_settings(load_settings()))


def test_backfilling_an_older_partition_fails_fast_naming_why_and_takes_no_dump(
    backup_env, instance, yesterday
):
    older = yesterday - timedelta(days=3)
    result = materialize(
        [database_backup],
        instance=instance,
        resources=resource_defs(),
        partition_key=older.isoformat(),
        raise_on_error=False,
    )

    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    description = failure.step_failure_data.user_failure_data.description
    assert f"only {yesterday.isoformat()} can be backed up now" in description
    assert Vault.from_settings(load_settings()).store.list("test/") == []
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert retries == []
    assert (
        failed_backup_runs(
            instance, BACKUP_KEY, utcnow() - timedelta(days=1), environment="test", database=None
        )
        == []
    )


# The alert sensor compares check records stamped by SQLite's clock with Python's.
@pytest.mark.external_clock
def test_a_backup_corrupted_in_storage_fails_the_blocking_checksum_check_and_alerts_critically(
    backup_env, instance, yesterday, alerts_captured
):
    result = materialize(
        [database_backup],
        instance=instance,
        resources={**resource_defs(), "vault": CorruptingVaultResource()},
        partition_key=yesterday.isoformat(),
        raise_on_error=False,
    )

    (checksum,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "checksum_matches"
    ]
    assert not checksum.passed and "SHA-256" in checksum.description
    assert not result.success  # a blocking check with error severity fails the run

    sense_from_start(instance)
    (event,) = [e for e in alerts_captured.events() if e["tags"]["alert"] == "checksum_mismatch"]
    assert event["level"] == "fatal"
    assert yesterday.isoformat() in str(event["message"])
    checkin_statuses = [c["status"] for c in alerts_captured.checkins()]
    assert checkin_statuses == ["in_progress", "error"]


def test_checks_rerun_on_an_existing_partition_catch_later_corruption(
    backup_env, instance, yesterday
):
    materialize(
        ALL[:2], instance=instance, resources=resource_defs(), partition_key=yesterday.isoformat()
    )
    vault = Vault.from_settings(load_settings())
    _flip_byte(vault, vault.object_key(yesterday))

    result = defs.resolve_job_def("backup_checks_job").execute_in_process(
        instance=instance, tags={"dagster/partition": yesterday.isoformat()}, raise_on_error=False
    )

    assert result.asset_materializations_for_node("database_backup") == []
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["decrypts_fully"].passed
    assert evaluations["decrypts_fully"].severity == AssetCheckSeverity.ERROR
    assert not evaluations["restorable"].passed  # the restore refuses the mismatch too


# The alert sensor compares check records stamped by SQLite's clock with Python's.
@pytest.mark.external_clock
def test_a_dump_half_the_previous_size_warns_without_failing_the_run(
    backup_env, instance, yesterday, alerts_captured
):
    vault = Vault.from_settings(load_settings())
    write_backup(vault, fake_manifest("test", yesterday - timedelta(days=1), dump_size_bytes=10**9))

    result = materialize(
        [database_backup],
        instance=instance,
        resources=resource_defs(),
        partition_key=yesterday.isoformat(),
    )

    assert result.success
    shrink = next(
        e for e in result.get_asset_check_evaluations() if e.check_name == "size_not_shrunk"
    )
    assert not shrink.passed and shrink.severity == AssetCheckSeverity.WARN
    sense_from_start(instance)
    (hook,) = alerts_captured.posts("/hook")
    assert hook["alert"] == "size_not_shrunk" and hook["level"] == "warning"


def test_check_alerts_are_sent_once_per_evaluation_thanks_to_the_cursor(
    backup_env, instance, yesterday, alerts_captured
):
    materialize(
        [database_backup],
        instance=instance,
        resources={**resource_defs(), "vault": CorruptingVaultResource()},
        partition_key=yesterday.isoformat(),
        raise_on_error=False,
    )
    resources = {"vault": VaultResource(), "alerts": AlertsResource()}
    cursor = sense_from_start(instance)
    make_alert_sensor(single_fleet()).evaluate_tick(
        build_sensor_context(instance=instance, resources=resources, cursor=cursor)
    )
    checks = [p for p in alerts_captured.posts("/hook") if p["alert"] == "checksum_mismatch"]
    assert len(checks) == 1


def test_backups_retry_with_exponential_backoff_and_jitter_by_default():
    policy = database_backup.op.retry_policy
    assert (policy.max_retries, policy.backoff, policy.jitter) == (
        3,
        Backoff.EXPONENTIAL,
        Jitter.PLUS_MINUS,
    )
    # Without a backfill policy, Dagster backfills one partition per run.
    assert database_backup.backfill_policy is None


def test_a_backup_to_s3_records_its_bucket_location_and_passes_its_checks(
    aws_env, awkward_database, monkeypatch, instance, yesterday
):
    monkeypatch.setenv("DATABASE_URL", awkward_database)

    result = materialize(
        ALL[:2], instance=instance, resources=resource_defs(), partition_key=yesterday.isoformat()
    )

    (materialization,) = result.asset_materializations_for_node("database_backup")
    assert materialization.metadata["object_location"].value == (
        f"s3://{aws_env.bucket}/test/{yesterday.isoformat()}/db_backup.sql.gz.enc"
    )
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_every_check_of_a_backup_is_recorded_under_its_day(backup_env, instance, yesterday):
    day = yesterday.isoformat()
    result = materialize(ALL, instance=instance, resources=resource_defs(), partition_key=day)
    assert result.success

    # Read back as the UI and the alert sensor do: the storage's check-execution history.
    names = ("checksum_matches", "duration_within_average", "size_not_shrunk")
    for name in (*names, "decrypts_fully", "restorable"):
        records = instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(BACKUP_KEY, name), limit=10
        )
        assert [(r.partition, r.status.value) for r in records] == [(day, "SUCCEEDED")], name


class ListingWatchedVaultResource(VaultResource):
    """A store that notes, in order, each listing of its backups and the writing of the
    dump's object."""

    seen: ClassVar[list[str]] = []

    def vault(self, settings: Settings | None = None) -> Vault:
        vault = super().vault(settings)
        store, seen = vault.store, self.seen
        open_writer, list_manifests = store.open_writer, vault.list_manifests

        def noting_writer(key: str, **options):
            if key.endswith(OBJECT_NAME):
                seen.append("object written")
            return open_writer(key, **options)

        def noting_listing():
            seen.append("listed")
            return list_manifests()

        store.open_writer = noting_writer  # type: ignore[method-assign]
        vault.list_manifests = noting_listing  # type: ignore[method-assign]
        return vault


def test_without_sentry_a_backup_lists_the_store_only_for_its_checks(
    backup_env, instance, yesterday, monkeypatch
):
    """The recent durations set Sentry's check-in margins only: a run without SENTRY_DSN does
    not read every manifest before its dump. Its checks still compare with the history."""
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    ListingWatchedVaultResource.seen.clear()
    result = materialize(
        [database_backup],
        instance=instance,
        resources={**resource_defs(), "vault": ListingWatchedVaultResource()},
        partition_key=yesterday.isoformat(),
    )
    assert result.success
    assert ListingWatchedVaultResource.seen[0] == "object written"
    assert "listed" in ListingWatchedVaultResource.seen


def test_the_check_in_monitor_of_a_large_database_allows_three_times_its_longest_backup(
    backup_env, instance, yesterday, alerts_captured
):
    vault = Vault.from_settings(load_settings())
    for days_ago in range(1, 8):
        day = yesterday - timedelta(days=days_ago)
        write_backup(vault, fake_manifest("test", day, duration_seconds=5 * 3600))

    result = materialize(
        [database_backup],
        instance=instance,
        resources=resource_defs(),
        partition_key=yesterday.isoformat(),
    )

    assert result.success
    configs = [c["monitor_config"] for c in alerts_captured.checkins()]
    assert [c["status"] for c in alerts_captured.checkins()] == ["in_progress", "ok"]
    assert all(c["max_runtime"] == 3 * 5 * 60 and c["checkin_margin"] == 5 * 60 for c in configs)
