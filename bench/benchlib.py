"""What the benchmarks share: the pgvault they time reads only the settings they give it."""

from __future__ import annotations

import os

# pgvault settings that must come from the benchmark, never from the caller's shell.
PGVAULT_VARIABLES = (
    "DATABASE_URL",
    "STAGING_DATABASE_URL",
    "BACKUP_S3_BUCKET",
    "BACKUP_KMS_KEY_ID",
    "BACKUP_LOCAL_DIR",
    "BACKUP_LOCAL_KEY_FILE",
    "BACKUP_STORAGE_BUDGET_BYTES",
    "PGVAULT_FLEET_FILE",
    "ALERT_WEBHOOK_URL",
    "SENTRY_DSN",
    "DAGSTER_HOME",
    "DAGSTER_PG_URL",
    "ENVIRONMENT_NAME",
    "RESTORE_PARALLEL_LOADERS",
    "RESTORE_READ_AHEAD_MIB",
)


def environ_without_pgvault() -> dict[str, str]:
    """This process's environment less every pgvault setting, for the benchmark to set its own."""
    return {k: v for k, v in os.environ.items() if k not in PGVAULT_VARIABLES}
