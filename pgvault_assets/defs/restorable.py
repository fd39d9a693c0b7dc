"""The restorable check: each backup restored onto a server of its own and counted.

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

from pgvault_assets.defs.backup import BACKUP_KEY, BACKUP_PARTITIONS, RESTORABLE, RESTORE_PROOF_POOL
from pgvault_assets.defs.resources import VaultResource
from pgvault_assets.engine.policy import SUNDAY
from pgvault_assets.engine.restore_check import verify_restorable
from pgvault_assets.errors import PgvaultError


@asset_check(
    asset=BACKUP_KEY,
    name=RESTORABLE,
    partitions_def=BACKUP_PARTITIONS,
    pool=RESTORE_PROOF_POOL,
    description=(
        "restored onto a throwaway PostgreSQL cluster (or RESTORE_CHECK_DATABASE_URL's server), "
        "never the backed-up one; every table's row count equals the manifest's, then dropped"
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
    server = settings.restore_check_database_url
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
            "server": (
                "a throwaway PostgreSQL cluster, removed afterwards"
                if server is None
                else str(server.with_dbname(proof.database))
            ),
        },
    )


defs = Definitions(asset_checks=[restorable])
