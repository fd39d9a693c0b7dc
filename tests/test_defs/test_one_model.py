"""One model: the single database is a fleet of one, and each database of a fleet file gets
the same capabilities in Dagster as the single database does, under its own names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dagster import AssetCheckKey, AssetKey, Definitions

from pgvault_assets.defs.location import build_defs
from pgvault_assets.defs.naming import DatabaseNames, Names, names_of
from pgvault_assets.defs.resources import resource_defs
from pgvault_assets.fleet import RESTORE_PROOF_POOL, Fleet, parse_fleet, single_fleet
from pgvault_assets.settings import platform_section

THREE_ON_TWO = parse_fleet(
    """
servers:
  - {name: main, url_env: MAIN_URL, max_concurrent_backups: 2}
  - {name: small, url_env: SMALL_URL}
databases:
  - {name: billing, server: main, dbname: billing}
  - {name: orders, server: main, dbname: orders}
  - {name: wiki, server: small, dbname: wiki, schedule_hour: 5}
""",
    Path("fleet.yaml"),
)


def _built(fleet: Fleet) -> Definitions:
    return Definitions.merge(
        build_defs(fleet, platform_section()), Definitions(resources=resource_defs())
    )


def pitr_capabilities(defs: Definitions, all_names: Names, names: DatabaseNames) -> set[str]:
    """Point-in-time recovery of the database's server, named without its names."""
    server = all_names.server_of(names.database)
    repository = defs.get_repository_def()
    found: set[str] = set()
    if server.base_backup in set(defs.resolve_all_asset_keys()):
        found.add("base backup of its server")
    if defs.get_asset_checks_def(AssetCheckKey(server.base_backup, "pitr_restorable")):
        found.add("check pitr_restorable of its server's base backup")
    for schedule in repository.schedule_defs:
        job = repository.get_job(schedule.job_name)
        if job.asset_layer and server.base_backup in job.asset_layer.executable_asset_keys:
            found.add(f"its server's base backup on {schedule.cron_schedule}")
    if any(sensor.name == "pitr_archive_sensor" for sensor in repository.sensor_defs):
        found.add("archive watch")
    return found


def capabilities(defs: Definitions, names: DatabaseNames) -> set[str]:
    """What the loaded definitions hold for one database, named without its names."""
    found: set[str] = set()
    repository = defs.get_repository_def()
    keys = set(defs.resolve_all_asset_keys())
    if names.backup in keys:
        backup = defs.resolve_assets_def(names.backup)
        found.add(f"backup in its pool ({backup.op.pool == names.pool})")
        found |= {f"check {spec.name}" for spec in backup.check_specs}
    for check in ("decrypts_fully", "restorable"):
        checks = defs.get_asset_checks_def(AssetCheckKey(names.backup, check))
        if checks is not None:
            found.add(f"check {check}")
            if check == "restorable" and checks.op.pool == RESTORE_PROOF_POOL:
                found.add("restore proof, one at a time")
    for schedule in repository.schedule_defs:
        job = repository.get_job(schedule.job_name)
        selected = set(job.asset_layer.executable_asset_keys) if job.asset_layer else set()
        if names.backup in selected and schedule.name == names.schedule:
            found.add(f"backed up daily at {names.database.schedule_hour:02d}:00")
        if names.drill in selected:
            found.add(f"drill on {schedule.name}")
    if names.drill in keys:
        drill = defs.resolve_assets_def(names.drill)
        if names.backup in drill.asset_deps[names.drill] and drill.op.pool == RESTORE_PROOF_POOL:
            found.add("drill of its backup, one at a time")
        found |= {f"drill check {spec.name}" for spec in drill.check_specs}
    restore = repository.get_job("restore_job")
    fields = restore.run_config_schema.config_type.fields["ops"].config_type.fields
    restore_config = fields["restore_from_backup"].config_type.fields["config"].config_type
    if {"date", "target", "database"} <= set(restore_config.fields):
        found.add("restore_job for a chosen database")
    return found


def test_every_database_of_a_fleet_has_the_single_databases_capabilities():
    single = names_of(single_fleet()).databases[0]
    single_defs = _built(single_fleet())
    expected = capabilities(single_defs, single) | pitr_capabilities(
        single_defs, names_of(single_fleet()), single
    )
    assert {
        "backup in its pool (True)",
        "check checksum_matches",
        "check decrypts_fully",
        "check restorable",
        "restore proof, one at a time",
        "backed up daily at 02:00",
        "drill of its backup, one at a time",
        "drill on quarterly_drill_schedule",
        "drill check recovery_time_within_objective",
        "restore_job for a chosen database",
        "base backup of its server",
        "check pitr_restorable of its server's base backup",
        "its server's base backup on 30 1 * * 0",
        "its server's base backup on 30 1 * * 1-6",
        "archive watch",
    } <= expected

    fleet = _built(THREE_ON_TWO)
    for names in names_of(THREE_ON_TWO).databases:
        hour = names.database.schedule_hour
        found = capabilities(fleet, names) | pitr_capabilities(fleet, names_of(THREE_ON_TWO), names)
        assert found == {
            c.replace("daily at 02:00", f"daily at {hour:02d}:00") for c in expected
        }, names.database.name


def test_the_single_database_keeps_the_names_its_history_was_recorded_under():
    single = names_of(single_fleet()).databases[0]
    assert (single.backup, single.drill, single.pool, single.schedule) == (
        AssetKey("database_backup"),
        AssetKey("disaster_recovery_drill"),
        "pgvault_backup",
        "daily_backup_schedule",
    )
    (pitr,) = names_of(single_fleet()).servers
    assert (pitr.base_backup, pitr.job, pitr.schedule("full"), pitr.schedule("diff")) == (
        AssetKey("pitr_base_backup"),
        "pitr_base_backup_job",
        "pitr_full_backup_schedule",
        "pitr_diff_backup_schedule",
    )
    wiki = names_of(THREE_ON_TWO).of("wiki")
    assert (wiki.backup, wiki.drill, wiki.pool, wiki.schedule) == (
        AssetKey(["backup", "wiki"]),
        AssetKey(["drill", "wiki"]),
        "pgvault/server/small",
        "fleet_backup_schedule_05",
    )


def test_no_module_of_defs_reads_the_environment_when_imported(tmp_path):
    """A fleet file that does not exist breaks the code location when it builds, in one line,
    and never an import: tests and the CLI import `defs/` without a configured environment."""
    script = (
        "import importlib, pkgutil, pgvault_assets.defs as package\n"
        "for module in pkgutil.iter_modules(package.__path__):\n"
        "    importlib.import_module(f'pgvault_assets.defs.{module.name}')\n"
        "print('imported')\n"
        "import pgvault_assets.definitions\n"
    )
    env = {**os.environ, "PGVAULT_FLEET_FILE": str(tmp_path / "absent.yaml")}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "imported", result.stderr[-2000:]
    assert result.returncode != 0
    assert f"PGVAULT_FLEET_FILE {tmp_path / 'absent.yaml'} does not exist" in result.stderr


def test_a_fleet_name_with_a_dash_builds_under_dagsters_rules():
    """Fleet names may hold `-` (the fleet file allows it); Dagster's group, job and schedule
    names may not: the server `db-main` is `db_main` there, its keys keep the dash."""
    fleet = parse_fleet(
        """
servers:
  - {name: db-main, url_env: MAIN_URL}
databases:
  - {name: my-db, server: db-main, dbname: billing}
""",
        Path("fleet.yaml"),
    )
    repository = _built(fleet).get_repository_def()
    assert repository.has_job("pitr_base_backup_job_db_main")
    assert AssetKey(["backup", "my-db"]) in set(_built(fleet).resolve_all_asset_keys())
