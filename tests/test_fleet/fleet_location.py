"""The code location the fleet's daemon tests load: the fleet's own definitions, with a schedule
that ticks once, at the UTC time `PGVAULT_TEST_TICK_AT` (HH:MM) names, every minute without it.

Once, not every minute: a schedule's run keys only keep one tick from starting a run twice
(Dagster scopes them to the tick's scheduled time), so a tick each minute would start every
database's run again while a slow machine is still busy with the first tick's. The time comes
from the environment, not the load, because the daemon reloads its code location each minute.
"""

import os

from dagster import Definitions

from pgvault_assets.defs.resources import resource_defs
from pgvault_assets.fleet import load_fleet
from pgvault_assets.settings import platform_section
from tests.test_fleet.helpers import backup_definitions

HOUR, MINUTE = os.environ.get("PGVAULT_TEST_TICK_AT", "*:*").split(":")

defs = Definitions.merge(
    backup_definitions(
        load_fleet(platform_section().fleet_file),
        cron_for_hour=lambda _hour: f"{MINUTE} {HOUR} * * *",
    ),
    Definitions(resources=resource_defs()),
)
