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

from pgvault_assets.defs.backup import (
    BACKUP_KEY,
    BACKUP_PARTITIONS,
    RESTORABLE,
    canceled_on_interrupt,
)
from pgvault_assets.defs.resources import VaultResource
from pgvault_assets.engine.fleet import RESTORE_PROOF_POOL
from pgvault_assets.engine.policy import SUNDAY
from pgvault_assets.engine.restore_check import verify_restorable
from pgvault_assets.engine.vault import Vault
from pgvault_assets.errors import PgvaultError
from pgvault_assets.settings import Settings

RESTORABLE_DESCRIPTION = (
    "restored onto a throwaway PostgreSQL cluster (or RESTORE_CHECK_DATABASE_URL's server), "
    "never the backed-up one; every table's row count equals the manifest's, then dropped"
)


def restorable_result(settings: Settings, vault: Vault, day: date) -> AssetCheckResult:
    """The proof of `day`'s backup, or why there is none; shared by the single database's
    check and each fleet database's, so both prove and report alike."""
    if settings.restore_verify_weekly and day.weekday() != SUNDAY:
        weekly = (
            "RESTORE_VERIFY_SCHEDULE=weekly"
            if settings.database is None
            else "a weekly restore_proof (the fleet file's, else RESTORE_VERIFY_SCHEDULE)"
        )
        return AssetCheckResult(
            passed=True,
            severity=AssetCheckSeverity.WARN,
            description=f"not restored: {weekly} proves Sunday backups only",
            metadata={"restore_verified": False},
        )
    server = settings.restore_check_database_url
    try:
        proof = verify_restorable(vault, day, server)
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
            "sha256": proof.sha256,
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


@asset_check(
    asset=BACKUP_KEY,
    name=RESTORABLE,
    partitions_def=BACKUP_PARTITIONS,
    pool=RESTORE_PROOF_POOL,
    description=RESTORABLE_DESCRIPTION,
)
def restorable(context: AssetCheckExecutionContext, vault: VaultResource) -> AssetCheckResult:
    settings = vault.settings()
    with canceled_on_interrupt(context):
        return restorable_result(
            settings, vault.vault(settings), date.fromisoformat(context.partition_key)
        )


defs = Definitions(asset_checks=[restorable])
