"""Every definition of the code location, built by one function from the fleet it is given.

Nothing here reads the environment when imported: the code location (definitions.py) builds
from `PGVAULT_FLEET_FILE` (or `DATABASE_URL`, the fleet of one), and a test builds from a
fleet it constructs, in-process.
"""

from dagster import Definitions

from pgvault_assets.defs.alerting import make_alert_sensor
from pgvault_assets.defs.backup import Build, backup_defs
from pgvault_assets.defs.maintenance import maintenance_defs
from pgvault_assets.defs.pitr import pitr_defs
from pgvault_assets.defs.recovery import recovery_defs
from pgvault_assets.fleet import Fleet
from pgvault_assets.settings import PlatformSettings


def build_defs(fleet: Fleet, config: PlatformSettings) -> Definitions:
    """Each database's backup, checks, restore proof, drill and restore job; point-in-time
    recovery where its server archives; the weekly maintenance and the alert sensors."""
    build = Build.of(fleet, config)
    return Definitions.merge(
        backup_defs(build),
        recovery_defs(build),
        pitr_defs(build),
        maintenance_defs(build),
        Definitions(sensors=[make_alert_sensor(fleet)]),
    )
