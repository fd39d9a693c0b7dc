"""The restorable check: each backup restored into a throwaway database and counted.

A warning, not a blocker: a backup that fails to restore is still the best copy there is
until a better one exists, so it stays listed while the alert sends someone to look.
"""

from datetime import date

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    Definitions,
    asset_check,
)

from pgvault_assets.defs.backup import BACKUP_KEY, BACKUP_PARTITIONS, RESTORABLE
from pgvault_assets.defs.resources import VaultResource
from pgvault_assets.engine.policy import SUNDAY
from pgvault_assets.engine.restore_check import verify_restorable
from pgvault_assets.errors import ConfigError, PgvaultError


@asset_check(
    asset=BACKUP_KEY,
    name=RESTORABLE,
    partitions_def=BACKUP_PARTITIONS,
    description=(
        "restored into a throwaway database on the staging server (STAGING_DATABASE_URL, else "
        "the backed-up server), every table's row count equals the manifest's, then dropped"
    ),
)
def restorable(context: AssetCheckExecutionContext, vault: VaultResource) -> AssetCheckResult:
    day = date.fromisoformat(context.partition_key)
    settings = vault.settings()
    if settings.restore_verify_weekly and day.weekday() != SUNDAY:
        return AssetCheckResult(
            passed=True,
            severity=AssetCheckSeverity.WARN,
            description="not restored: RESTORE_VERIFY_SCHEDULE=weekly proves Sunday backups only",
            metadata={"restore_verified": False},
        )
    server = settings.staging_database_url or settings.database_url
    if server is None:
        raise ConfigError(
            "neither STAGING_DATABASE_URL nor DATABASE_URL is set; set one to prove restores"
        )
    try:
        proof = verify_restorable(vault.vault(settings), day, server)
    except PgvaultError as exc:
        return AssetCheckResult(
            passed=False, severity=AssetCheckSeverity.WARN, description=str(exc)
        )
    return AssetCheckResult(
        passed=True,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "restore_verified": True,
            "restore_verified_at": proof.verified_at.isoformat(),
            "tables": proof.tables,
            "row_total": proof.row_total,
            "duration_seconds": proof.duration_seconds,
            "server": str(server.with_dbname(proof.database)),
        },
    )


defs = Definitions(asset_checks=[restorable])
