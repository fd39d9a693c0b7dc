"""The Dagster side of PITR: base backups as an asset, the archive sensor's episodes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from dagster import build_schedule_context, build_sensor_context, materialize

from pgvault_assets.defs.resources import AlertsResource, VaultResource
from pgvault_assets.engine.pitr.archive import (
    RESOLVED,
    ArchiverState,
    PitrStatus,
    archive_alert_step,
)
from pgvault_assets.engine.pitr.window import Window
from tests.test_defs.single import (
    pitr_archive_sensor,
    pitr_base_backup,
    pitr_diff_backup_schedule,
    pitr_restorable,
)
from tests.test_pitr.conftest import ArchivingServer

RESOURCES = {"vault": VaultResource(), "alerts": AlertsResource()}
COMMAND = "timeout 60 pgbackrest archive-push %p"
SEEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def archiver(last_archived_at: datetime, *, ready: int = 1) -> ArchiverState:
    return ArchiverState(
        archive_mode="on",
        archive_command=COMMAND,
        archived_count=10,
        failed_count=0,
        last_archived_wal="000000010000000000000009",
        last_archived_at=last_archived_at,
        last_failed_wal=None,
        last_failed_at=None,
        ready_count=ready,
        current_lsn=0x0B000000,
        observed_at=SEEN,
    )


def status(state: ArchiverState) -> PitrStatus:
    return PitrStatus(Window((), (), (), "15-1"), None, state, COMMAND)


def lag_kinds(state: ArchiverState) -> list[str]:
    kinds = [kind for kind, _ in status(state).problems(timedelta(minutes=15))]
    return [kind for kind in kinds if kind != "pitr_no_base_backup"]


def test_the_lag_alert_fires_on_the_first_tick_past_the_bound_and_once_per_episode() -> None:
    inside = archiver(SEEN - timedelta(minutes=15))
    past = archiver(SEEN - timedelta(minutes=15, seconds=1))
    assert lag_kinds(inside) == []
    assert lag_kinds(past) == ["pitr_archive_lag"]

    sent, cursor = archive_alert_step(status(inside).problems(timedelta(minutes=15)), None)
    assert [a.kind for a in sent] == ["pitr_no_base_backup"]
    sent, cursor = archive_alert_step(status(past).problems(timedelta(minutes=15)), cursor)
    assert [a.kind for a in sent] == ["pitr_archive_lag"]
    sent, cursor = archive_alert_step(status(past).problems(timedelta(minutes=15)), cursor)
    assert sent == []
    sent, cursor = archive_alert_step([], cursor)
    assert [a.kind for a in sent] == [RESOLVED]


def test_an_idle_server_whose_newest_wal_is_old_is_not_lagging() -> None:
    # Nothing written past segment 9, the newest archived, two days ago.
    idle = replace(archiver(SEEN - timedelta(days=2), ready=0), current_lsn=0x0A000000)
    assert idle.lag is None
    assert lag_kinds(idle) == []


def test_failing_archiving_is_its_own_problem() -> None:
    failing = replace(
        archiver(SEEN - timedelta(minutes=1)),
        failed_count=3,
        last_failed_wal="00000001000000000000000A",
        last_failed_at=SEEN,
    )
    assert "pitr_archive_failing" in lag_kinds(failing)


def test_without_pitr_the_sensor_and_the_schedules_skip_saying_why(
    archiving_server: ArchivingServer, instance, alerts_captured
) -> None:
    context = build_sensor_context(instance=instance, resources=RESOURCES)
    result = pitr_archive_sensor.evaluate_tick(context)
    assert "not set up" in (result.skip_message or "")
    schedule = pitr_diff_backup_schedule.evaluate_tick(
        build_schedule_context(instance=instance, resources=RESOURCES)
    )
    assert "not set up" in (schedule.skip_message or "")
    assert alerts_captured.posts("/hook") == []


def test_the_base_backup_asset_its_restorable_proof_and_a_gap_alerted_once(
    pitr_server: ArchivingServer, instance, alerts_captured
) -> None:
    pitr_server.sql("CREATE TABLE orders AS SELECT generate_series(1, 7) AS id")
    pitr_server.switch_and_wait()
    result = materialize(
        [pitr_base_backup, pitr_restorable],
        instance=instance,
        resources=RESOURCES,
        run_config={"ops": {"pitr_base_backup": {"config": {"kind": "diff"}}}},
    )
    assert result.success
    (materialization,) = result.asset_materializations_for_node("pitr_base_backup")
    assert materialization.metadata["type"].value == "diff"
    assert materialization.metadata["size_bytes"].value > 0
    (proof,) = result.get_asset_check_evaluations()
    assert proof.passed, proof.description
    assert proof.metadata["row_total"].value == 7
    assert proof.metadata["replay_seconds"].value > 0

    cursor = None
    context = build_sensor_context(instance=instance, cursor=cursor, resources=RESOURCES)
    pitr_archive_sensor.evaluate_tick(context)
    assert alerts_captured.posts("/hook") == []
    cursor = context.cursor

    pitr_server.sql("CREATE TABLE t (x int)")
    for _ in range(3):
        pitr_server.switch_and_wait()
    segments = sorted((pitr_server.pitr_dir / "repo" / "archive").rglob("*-*.gz"))
    segments[-2].unlink()
    for _ in range(2):
        context = build_sensor_context(instance=instance, cursor=cursor, resources=RESOURCES)
        pitr_archive_sensor.evaluate_tick(context)
        cursor = context.cursor
    gaps = [p for p in alerts_captured.posts("/hook") if p["alert"] == "pitr_archive_gap"]
    assert len(gaps) == 1
