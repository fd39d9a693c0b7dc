"""The code location the fleet tick test's daemon loads: the fleet's own definitions, with a
schedule that ticks every minute so one tick comes within a minute of the daemon starting."""

from dagster import Definitions

from pgvault_assets.defs.fleet import FLEET, fleet_definitions
from pgvault_assets.defs.resources import resource_defs

defs = Definitions.merge(
    fleet_definitions(FLEET, cron_for_hour=lambda _hour: "* * * * *"),
    Definitions(resources=resource_defs()),
)
