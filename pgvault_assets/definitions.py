"""The Dagster code location: every module under `defs/` merged, with the resources.

With a fleet file (`PGVAULT_FLEET_FILE`) the location is the fleet's backups and its weekly
maintenance instead of the single database's definitions."""

from dagster import Definitions

from pgvault_assets.defs import (
    alerting,
    backup,
    fleet,
    fleet_maintenance,
    maintenance,
    pitr,
    recovery,
    restorable,
)
from pgvault_assets.defs.resources import resource_defs

single_database = (
    backup.defs,
    restorable.defs,
    maintenance.defs,
    alerting.defs,
    recovery.defs,
    pitr.defs,
)
defs = Definitions.merge(
    *(single_database if fleet.defs is None else (fleet.defs, fleet_maintenance.defs)),
    Definitions(resources=resource_defs()),
)
