"""The single database's definitions, built in-process from the fleet of one as the code
location builds them without a fleet file."""

from dagster import AssetsDefinition

from pgvault_assets.defs.backup import (
    Build,
    make_database_backup,
    make_decrypts_fully,
    make_restorable,
)
from pgvault_assets.defs.maintenance import maintenance_assets
from pgvault_assets.defs.pitr import pitr_defs
from pgvault_assets.defs.recovery import make_drill
from pgvault_assets.fleet import single_fleet
from pgvault_assets.settings import PlatformSettings, platform_section


def backup_with(config: PlatformSettings) -> AssetsDefinition:
    """The single database's backup asset built with `config` (its retries)."""
    build = Build.of(single_fleet(), config)
    return make_database_backup(build, build.names.databases[0])


BUILD = Build.of(single_fleet(), platform_section())
(NAMES,) = BUILD.names.databases
database_backup = make_database_backup(BUILD, NAMES)
decrypts_fully = make_decrypts_fully(BUILD, NAMES)
restorable = make_restorable(BUILD, NAMES)
disaster_recovery_drill = make_drill(NAMES)
retention_state, weekly_health_report, kept_databases = maintenance_assets(BUILD)
RETENTION_KEY = retention_state.key
PITR = pitr_defs(BUILD)
(pitr_archive_sensor,) = PITR.sensors
(pitr_base_backup,) = PITR.assets
(pitr_restorable,) = PITR.asset_checks
pitr_diff_backup_schedule = next(s for s in PITR.schedules if s.name == "pitr_diff_backup_schedule")
