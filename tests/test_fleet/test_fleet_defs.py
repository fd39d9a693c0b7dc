"""The fleet on Dagster: an asset per database in its server's pool, a run per database per day."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from dagster import (
    AssetCheckKey,
    AssetKey,
    DagsterInstance,
    Definitions,
    build_schedule_context,
    materialize,
)

from pgvault_assets.cli import main
from pgvault_assets.defs.resources import VaultResource, resource_defs
from pgvault_assets.engine.basics.clock import latest_complete_day, utcnow
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.fleet import load_fleet, parse_fleet
from pgvault_assets.settings import load_settings
from tests.conftest import PG_SERVER_URL
from tests.test_fleet.helpers import (
    backup_definitions,
    fleet_backup,
    fleet_decrypts_fully,
    fresh_definitions,
    write_fleet,
)

REPO = Path(__file__).resolve().parents[2]
FLEET = parse_fleet(
    """
servers:
  - {name: main, url_env: MAIN_URL, max_concurrent_backups: 3}
  - {name: small, url_env: SMALL_URL}
databases:
  - {name: billing, server: main, dbname: billing, max_runtime_seconds: 3600,
     run_tags: {ecs/cpu: "1024"}}
  - {name: orders, server: main, dbname: orders}
  - {name: wiki, server: small, dbname: wiki, schedule_hour: 5}
""",
    Path("fleet.yaml"),
)


def _defs() -> Definitions:
    return Definitions.merge(backup_definitions(FLEET), Definitions(resources=resource_defs()))


def test_each_database_is_an_asset_in_its_server_pool_and_group():
    defs = _defs()

    billing = defs.resolve_assets_def(AssetKey(["backup", "billing"]))
    wiki = defs.resolve_assets_def(AssetKey(["backup", "wiki"]))
    assert billing.op.pool == "pgvault/server/main"
    assert wiki.op.pool == "pgvault/server/small"
    assert billing.group_names_by_key[billing.key] == "main"
    assert billing.partitions_def is not None
    assert {spec.name for spec in billing.check_specs} == {
        "checksum_matches",
        "duration_within_average",
        "size_not_shrunk",
    }
    assert defs.get_asset_checks_def(AssetCheckKey(billing.key, "decrypts_fully")) is not None
    assert set(defs.resolve_all_asset_keys()) == {
        AssetKey(["backup", name]) for name in ("billing", "orders", "wiki")
    }


def test_the_schedule_requests_one_run_per_database_per_day_with_its_tags():
    defs = _defs()
    schedule = defs.resolve_schedule_def("fleet_backup_schedule_02")
    tick = datetime(2026, 3, 15, 2, 0, tzinfo=UTC)

    with DagsterInstance.ephemeral() as instance:
        context = build_schedule_context(
            instance=instance,
            scheduled_execution_time=tick,
            repository_def=defs.get_repository_def(),
        )
        requests = schedule.evaluate_tick(context).run_requests

    assert schedule.cron_schedule == "0 2 * * *"
    assert [(r.run_key, r.partition_key) for r in requests] == [
        ("billing|2026-03-14", "2026-03-14"),
        ("orders|2026-03-14", "2026-03-14"),
    ]
    assert requests[0].asset_selection == [AssetKey(["backup", "billing"])]
    assert (
        requests[0].tags.items()
        >= {
            "pgvault/database": "billing",
            "pgvault/server": "main",
            "dagster/max_runtime": "3600",
            "ecs/cpu": "1024",
        }.items()
    )
    assert "dagster/max_runtime" not in requests[1].tags
    assert defs.resolve_schedule_def("fleet_backup_schedule_05").cron_schedule == "0 5 * * *"


NAMES = (
    "[sorted(k.to_user_string() for k in defs.resolve_all_asset_keys()), "
    "sorted(s.name for s in defs.schedules)]"
)


def test_the_code_location_is_the_fleet_with_a_fleet_file_and_unchanged_without(
    local_env, monkeypatch
):
    keys, schedules = fresh_definitions(NAMES)
    assert "database_backup" in keys and "daily_backup_schedule" in schedules
    assert not any("backup/" in name or "fleet" in name for name in keys + schedules)

    write_fleet(
        local_env,
        monkeypatch,
        servers={"main": (f"{PG_SERVER_URL}/postgres", 2)},
        databases={"alpha": ("main", "alpha"), "beta": ("main", "beta")},
    )
    assert fresh_definitions(NAMES) == [
        [
            "backup/alpha",
            "backup/beta",
            "drill/alpha",
            "drill/beta",
            "fleet/kept_databases",
            "fleet/retention_state",
            "fleet/weekly_health_report",
            "pitr/main",  # point-in-time recovery per server
        ],
        [
            "fleet_backup_schedule_02",
            "fleet_maintenance_schedule",
            "pitr_diff_backup_schedule_main",
            "pitr_full_backup_schedule_main",
            "quarterly_drill_schedule",
        ],
    ]


def test_a_fleet_database_materializes_under_its_own_prefix(local_env, make_database, monkeypatch):
    url = make_database("alpha")
    write_fleet(
        local_env,
        monkeypatch,
        servers={"main": (f"{PG_SERVER_URL}/postgres", 2)},
        databases={"alpha": ("main", url.rsplit("/", 1)[1]), "beta": ("main", "elsewhere")},
    )
    day = latest_complete_day(utcnow())
    fleet = load_fleet(load_settings().platform.fleet_file)

    with DagsterInstance.ephemeral() as instance:
        result = materialize(
            [fleet_backup(fleet, "alpha"), fleet_decrypts_fully(fleet, "alpha")],
            instance=instance,
            resources=resource_defs(),
            partition_key=day.isoformat(),
        )

    assert result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["checksum_matches"] and checks["decrypts_fully"]
    assert (local_env / "store" / "test" / "alpha" / day.isoformat() / "manifest.json").exists()
    assert not (local_env / "store" / "test" / day.isoformat()).exists()


def test_apply_limits_sets_every_server_pool_on_the_instance(
    local_env, make_database, monkeypatch, capsys
):
    fleet_file = write_fleet(
        local_env,
        monkeypatch,
        servers={"main": (f"{PG_SERVER_URL}/postgres", 3), "small": (PG_SERVER_URL + "/x", 1)},
        databases={"alpha": ("main", "alpha"), "beta": ("small", "beta")},
    )
    fleet_file.write_text(fleet_file.read_text() + "max_concurrent_restore_proofs: 2\n")
    home = local_env / "production_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_URL", make_database("dagster"))

    assert main(["fleet", "apply-limits"]) == 0

    assert "pool pgvault/server/main: limit 3" in capsys.readouterr().out
    with DagsterInstance.get() as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        storage = instance.event_log_storage
        assert storage.get_concurrency_info("pgvault/server/main").slot_count == 3
        assert storage.get_concurrency_info("pgvault/server/small").slot_count == 1
        assert storage.get_concurrency_info("pgvault_restore_proof").slot_count == 2


def test_apply_limits_without_a_fleet_file_is_one_line(local_env, capsys):
    assert main(["fleet", "apply-limits"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: PGVAULT_FLEET_FILE is not set") and err.count("\n") == 1


def test_the_vault_of_a_pinned_database_is_its_namespace(local_env, monkeypatch):
    write_fleet(
        local_env,
        monkeypatch,
        servers={"main": (f"{PG_SERVER_URL}/postgres", 2)},
        databases={"alpha": ("main", "alpha")},
    )
    resource = VaultResource()
    assert Vault.from_settings(resource.settings("alpha")).environment == "test/alpha"
    assert Vault.from_settings(resource.settings()).environment == "test"
