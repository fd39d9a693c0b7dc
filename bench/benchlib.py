"""What the benchmarks share: the pgvault they time reads only the settings they give it."""

from __future__ import annotations

import os

from pgvault_assets.settings import own_variables

# Every variable pgvault declares as its own (settings.py), so one added there is dropped here
# too, and Dagster's instance: these come from the benchmark, never from the caller's shell
# (a BACKUP_COMPRESSION_LEVEL or PGVAULT_HOME left set there would change what is timed).
# Other tools' variables pgvault also reads (AWS_*, XDG_DATA_HOME) pass through as set.
PGVAULT_VARIABLES = (*own_variables(), "DAGSTER_HOME", "DAGSTER_PG_URL")


def environ_without_pgvault() -> dict[str, str]:
    """This process's environment less every pgvault setting, for the benchmark to set its own."""
    return {k: v for k, v in os.environ.items() if k not in PGVAULT_VARIABLES}
