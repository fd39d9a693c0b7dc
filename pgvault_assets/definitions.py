"""The Dagster code location: every module under `defs/` merged, with the resources."""

from dagster import Definitions

from pgvault_assets.defs import alerting, backup, maintenance, pitr, recovery, restorable
from pgvault_assets.defs.resources import resource_defs

defs = Definitions.merge(
    backup.defs,
    restorable.defs,
    maintenance.defs,
    alerting.defs,
    recovery.defs,
    pitr.defs,
    Definitions(resources=resource_defs()),
)
