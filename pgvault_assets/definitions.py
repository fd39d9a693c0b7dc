"""The Dagster code location: every module under `defs/` merged, with the resources.

With a fleet file (`PGVAULT_FLEET_FILE`) the location is the fleet's backups, its weekly
maintenance and its alert sensor instead of the single database's definitions."""

from dagster import Definitions

from pgvault_assets.defs import (
    alerting,
    backup,
    fleet,
    fleet_alerting,
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
# Without a fleet file the location is the single database's, exactly as it always was.
fleet_wide = tuple(
    d for d in (fleet.defs, fleet_maintenance.defs, fleet_alerting.defs) if d is not None
)
defs = Definitions.merge(
    *(single_database if fleet.defs is None else fleet_wide),
    Definitions(resources=resource_defs()),
)
