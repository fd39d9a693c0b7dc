"""The Dagster code location: the definitions `defs/` builds for the fleet, with the resources.

The fleet is the fleet file's (`PGVAULT_FLEET_FILE`), or without one `DATABASE_URL` as a
fleet of one; both are built by the same function."""

from dagster import Definitions

from pgvault_assets.defs.location import build_defs
from pgvault_assets.defs.resources import resource_defs
from pgvault_assets.fleet import load_fleet
from pgvault_assets.settings import platform_section

platform = platform_section()
defs = Definitions.merge(
    build_defs(load_fleet(platform.fleet_file), platform),
    Definitions(resources=resource_defs()),
)
