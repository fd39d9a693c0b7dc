"""The fleet's alert sensor over a real instance, real runs and a real store: each failure,
check, stale episode and health warning alerted once, naming its database."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from dagster import (
    AssetCheckKey,
    AssetsDefinition,
    AssetSelection,
    DagsterInstance,
    Definitions,
    build_sensor_context,
    define_asset_job,
    materialize,
)

from pgvault_assets.defs.alerting import make_alert_sensor as make_fleet_alert_sensor
from pgvault_assets.defs.backup import Build, make_database_backup, make_decrypts_fully
from pgvault_assets.defs.naming import fleet_backup_key
from pgvault_assets.defs.resources import AlertsResource, VaultResource, resource_defs
from pgvault_assets.engine.basics.clock import latest_complete_day, utcnow
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.fleet import Fleet, load_fleet
from pgvault_assets.settings import load_settings, platform_section
from tests.conftest import PG_HOST, PG_PORT, PG_USER
from tests.test_defs.backup_history import fake_manifest, write_backup, write_history
from tests.test_defs.http_capture import Captured
from tests.test_fleet.helpers import fresh_definitions, write_fleet

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cret-pw"
# Trust authentication ignores the password; it is there to prove no alert shows it.
SERVER_URL = f"postgresql://{PG_USER}:{SECRET}@{PG_HOST}:{PG_PORT}/postgres"
RESOURCES = {"vault": VaultResource(), "alerts": AlertsResource()}
NO_RETRIES = platform_section({"BACKUP_MAX_RETRIES": "0"})


def _backup(fleet: Fleet, name: str) -> AssetsDefinition:
    build = Build.of(fleet, NO_RETRIES)
    return make_database_backup(build, build.names.of(name))


SENSOR_NAMES = "sorted(s.name for s in defs.sensors)"
SENSOR_NAME = "fleet_alert_sensor"


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _fleet(local_env: Path, monkeypatch, databases: dict[str, str]) -> Fleet:
    write_fleet(
        local_env,
        monkeypatch,
        servers={"main": (SERVER_URL, 2)},
        databases={name: ("main", dbname) for name, dbname in databases.items()},
    )
    return load_fleet(load_settings().platform.fleet_file)


def _vault(name: str) -> Vault:
    return VaultResource().vault(VaultResource().settings(name))


def _tick(sensor, instance: DagsterInstance, cursor: str | None) -> tuple[str, str]:
    """One evaluation: the new cursor and what the tick said it did."""
    context = build_sensor_context(instance=instance, cursor=cursor, resources=RESOURCES)
    result = sensor.evaluate_tick(context)
    return context.cursor, result.skip_message


def _sent(captured: Captured) -> list[tuple[str, str, str]]:
    return [
        (post["alert"], post["tags"].get("database", "?"), post["level"])
        for post in captured.posts("/hook")
    ]


def test_failed_backups_and_checks_alert_once_each_naming_their_database(
    local_env, make_database, monkeypatch, instance, alerts_captured
):
    alpha_db = make_database("alpha").rsplit("/", 1)[1]
    fleet = _fleet(local_env, monkeypatch, {"alpha": alpha_db, "beta": "pgvault_test_dropped"})
    day = latest_complete_day(utcnow())
    # A previous backup ten times larger: today's real one fails size_not_shrunk, a warning.
    write_backup(
        _vault("alpha"),
        fake_manifest("test/alpha", day - timedelta(days=1), dump_size_bytes=10**10),
    )
    # The sensor's clock is the morning after `day`, when its backup runs: alpha's newest
    # backup (finished at 02:01 on `day`) is then a day old, never stale at any hour of the
    # real day the test runs.
    morning_after = datetime.combine(day + timedelta(days=1), time(3, 0), UTC)
    sensor = make_fleet_alert_sensor(fleet, FakeClock(morning_after))
    cursor, _ = _tick(sensor, instance, None)

    build = Build.of(fleet, NO_RETRIES)
    alpha = make_database_backup(build, build.names.of("alpha"))
    beta = make_database_backup(build, build.names.of("beta"))
    for asset in (alpha, beta):
        materialize(
            [asset],
            instance=instance,
            resources=resource_defs(),
            partition_key=day.isoformat(),
            raise_on_error=False,
        )
    stored = local_env / "store" / "test" / "alpha" / day.isoformat() / "db_backup.sql.gz.enc"
    stored.write_bytes(stored.read_bytes()[:-64] + bytes(64))
    # A check run as the UI launches one: the check alone, no pgvault tags.
    check_key = AssetCheckKey(fleet_backup_key("alpha"), "decrypts_fully")
    checks_only = Definitions(
        assets=[alpha],
        asset_checks=[make_decrypts_fully(build, build.names.of("alpha"))],
        jobs=[
            define_asset_job(
                "checks", AssetSelection.checks(check_key), partitions_def=build.partitions
            )
        ],
        resources=resource_defs(),
    )
    check_run = checks_only.resolve_job_def("checks").execute_in_process(
        instance=instance, tags={"dagster/partition": day.isoformat()}
    )
    assert not instance.get_run_by_id(check_run.run_id).tags.get("pgvault/database")

    cursor, said = _tick(sensor, instance, cursor)

    assert said.startswith("3 finished runs read, 3 alerts sent")
    assert sorted(_sent(alerts_captured)) == [
        ("backup_failed", "beta", "fatal"),
        ("decrypts_fully", "alpha", "fatal"),
        ("size_not_shrunk", "alpha", "warning"),
    ]
    posts = {post["alert"]: post for post in alerts_captured.posts("/hook")}
    assert posts["backup_failed"]["text"].count("beta: backup of " + day.isoformat()) == 1
    assert "pgvault_test_dropped" in posts["backup_failed"]["text"]
    assert posts["decrypts_fully"]["tags"]["partition"] == day.isoformat()
    events = {e["tags"]["alert"]: e for e in alerts_captured.events()}
    assert events["backup_failed"]["tags"]["database"] == "beta"
    assert all(SECRET.encode() not in body for _, body in alerts_captured.requests)
    # The successful backup moved alpha's newest backup without listing the store.
    newest = datetime.fromisoformat(json.loads(cursor)["databases"]["alpha"]["newest"])
    assert newest > utcnow() - timedelta(minutes=10)

    cursor, said = _tick(sensor, instance, cursor)
    assert said.startswith("0 finished runs read, 0 alerts sent")
    assert len(alerts_captured.posts("/hook")) == 3


def test_a_run_of_another_environment_is_not_alerted_for_this_ones_database(
    local_env, monkeypatch, instance, alerts_captured
):
    fleet = _fleet(local_env, monkeypatch, {"beta": "pgvault_test_dropped"})
    day = latest_complete_day(utcnow())
    morning_after = datetime.combine(day + timedelta(days=1), time(3, 0), UTC)
    sensor = make_fleet_alert_sensor(fleet, FakeClock(morning_after))
    cursor, _ = _tick(sensor, instance, None)
    with monkeypatch.context() as other:
        other.setenv("ENVIRONMENT_NAME", "other")
        materialize(
            [_backup(fleet, "beta")],
            instance=instance,
            resources=resource_defs(),
            partition_key=day.isoformat(),
            raise_on_error=False,
        )

    cursor, said = _tick(sensor, instance, cursor)

    assert said.startswith("1 finished runs read, 0 alerts sent")
    assert alerts_captured.posts("/hook") == []


def test_each_database_has_its_own_stale_episode_and_resolved_notice(
    local_env, monkeypatch, instance, alerts_captured
):
    fleet = _fleet(local_env, monkeypatch, {"alpha": "alpha", "beta": "beta"})
    write_history(_vault("alpha"), date(2025, 5, 30), date(2025, 6, 1))  # newest 06-02 02:01
    write_history(_vault("beta"), date(2025, 5, 30), date(2025, 6, 3))  # newest 06-04 02:01
    clock = FakeClock(datetime(2025, 6, 3, 0, 0, tzinfo=UTC))
    sensor = make_fleet_alert_sensor(fleet, clock)

    cursor, _ = _tick(sensor, instance, None)
    assert _sent(alerts_captured) == []

    clock.now = datetime(2025, 6, 3, 15, 0, tzinfo=UTC)  # alpha 37 h without a backup
    cursor, said = _tick(sensor, instance, cursor)
    assert said.endswith("stale: alpha")
    clock.now += timedelta(minutes=1)
    cursor, _ = _tick(sensor, instance, cursor)
    assert _sent(alerts_captured) == [("backup_stale", "alpha", "fatal")]

    clock.now = datetime(2025, 6, 5, 15, 0, tzinfo=UTC)  # beta's turn; alpha still stale
    cursor, said = _tick(sensor, instance, cursor)
    assert said.endswith("stale: alpha, beta")
    assert _sent(alerts_captured)[1:] == [("backup_stale", "beta", "fatal")]

    write_backup(_vault("alpha"), fake_manifest("test/alpha", date(2025, 6, 5)))
    clock.now = datetime(2025, 6, 6, 3, 0, tzinfo=UTC)  # the hourly pass finds it
    cursor, said = _tick(sensor, instance, cursor)
    clock.now += timedelta(hours=2)
    cursor, _ = _tick(sensor, instance, cursor)

    assert said.endswith("stale: beta")
    assert _sent(alerts_captured)[2:] == [("backup_stale_resolved", "alpha", "info")]
    stale = [e for e in alerts_captured.events() if e["tags"]["alert"] == "backup_stale"]
    assert [e["fingerprint"] for e in stale] == [
        ["pgvault", "test", "backup_stale", "alpha"],
        ["pgvault", "test", "backup_stale", "beta"],
    ]
    texts = [post["text"] for post in alerts_captured.posts("/hook")]
    assert "alpha: no backup has succeeded for more than 36 h" in texts[0]
    assert "check the fleet_backup_schedule_02 and the last backup run" in texts[0]
    assert "beta: no backup has succeeded" in texts[1]


def test_a_database_added_to_the_file_is_seeded_and_one_removed_is_dropped(
    local_env, monkeypatch, instance, alerts_captured
):
    clock = FakeClock(datetime(2025, 6, 3, 0, 0, tzinfo=UTC))
    fleet = _fleet(local_env, monkeypatch, {"alpha": "alpha", "beta": "beta"})
    cursor, _ = _tick(make_fleet_alert_sensor(fleet, clock), instance, None)
    assert set(json.loads(cursor)["databases"]) == {"alpha", "beta"}

    fleet = _fleet(local_env, monkeypatch, {"alpha": "alpha", "gamma": "gamma"})
    (old,) = write_history(_vault("gamma"), date(2025, 5, 20), date(2025, 5, 20))
    clock.now += timedelta(minutes=1)  # the hourly pass is not due: gamma is read as new
    cursor, _ = _tick(make_fleet_alert_sensor(fleet, clock), instance, cursor)

    databases = json.loads(cursor)["databases"]
    assert set(databases) == {"alpha", "gamma"}
    assert datetime.fromisoformat(databases["gamma"]["newest"]) == old.finished_at
    assert _sent(alerts_captured) == [("backup_stale", "gamma", "fatal")]
    # alpha, never backed up, is not stale before 36 h after it was first seen.
    clock.now = datetime(2025, 6, 4, 12, 1, tzinfo=UTC)
    _tick(make_fleet_alert_sensor(fleet, clock), instance, cursor)
    assert _sent(alerts_captured)[1:] == [("backup_stale", "alpha", "fatal")]


def test_health_warns_per_database_and_storage_for_the_fleet_once_an_hour_at_most(
    local_env, monkeypatch, instance, alerts_captured
):
    fleet = _fleet(local_env, monkeypatch, {"alpha": "alpha", "beta": "beta"})
    write_history(_vault("alpha"), date(2025, 5, 1), date(2025, 5, 31), size_bytes=1000)
    write_history(_vault("beta"), date(2025, 5, 30), date(2025, 5, 31), size_bytes=1000)
    beta_manifest = _vault("beta").manifest_key(date(2025, 5, 30))
    _vault("beta").store.put_bytes(beta_manifest, b"{not json")
    # alpha alone (31 kB) is within the budget; the fleet's 32 kB is not.
    monkeypatch.setenv("BACKUP_STORAGE_BUDGET_BYTES", "31500")
    clock = FakeClock(datetime(2025, 6, 1, 3, tzinfo=UTC))
    sensor = make_fleet_alert_sensor(fleet, clock)

    cursor, _ = _tick(sensor, instance, None)
    assert sorted(_sent(alerts_captured)) == [
        ("manifest_unreadable", "beta", "warning"),
        ("storage_over_budget", "?", "warning"),  # the fleet's, no database's
    ]

    alpha_manifest = _vault("alpha").manifest_key(date(2025, 5, 31))
    _vault("alpha").store.put_bytes(alpha_manifest, b"{not json")
    clock.now += timedelta(minutes=10)
    cursor, _ = _tick(sensor, instance, cursor)
    assert len(_sent(alerts_captured)) == 2  # within the hour: the store is not read

    clock.now += timedelta(hours=1)
    cursor, _ = _tick(sensor, instance, cursor)
    clock.now += timedelta(hours=1)
    cursor, _ = _tick(sensor, instance, cursor)
    assert _sent(alerts_captured)[2:] == [("manifest_unreadable", "alpha", "warning")]

    monkeypatch.setenv("BACKUP_STORAGE_BUDGET_BYTES", "10000000")
    clock.now += timedelta(hours=1)
    cursor, _ = _tick(sensor, instance, cursor)
    # alpha's unreadable record no longer counts: 30 kB of its own, 31 kB for the fleet.
    monkeypatch.setenv("BACKUP_STORAGE_BUDGET_BYTES", "30500")
    clock.now += timedelta(hours=1)
    _tick(sensor, instance, cursor)
    assert _sent(alerts_captured)[3:] == [("storage_over_budget", "?", "warning")]


def test_the_fleet_location_has_the_fleet_alert_sensor_and_the_single_one_its_own(
    local_env, monkeypatch
):
    single = fresh_definitions(SENSOR_NAMES)
    assert single == ["backup_alert_sensor", "pitr_archive_sensor"]

    _fleet(local_env, monkeypatch, {"alpha": "alpha"})
    # Point-in-time recovery is per server now, watched by the one archive sensor.
    assert fresh_definitions(SENSOR_NAMES) == [SENSOR_NAME, "pitr_archive_sensor"]
