"""What backups there are: the rows behind `list-backups` and its JSON."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from pgvault_assets.engine.basics import names
from pgvault_assets.engine.basics.policy import tiers_of
from pgvault_assets.engine.recovery.restore_check import proven_at, restore_proofs
from pgvault_assets.engine.storage.store import open_store
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.settings import Settings


def backup_rows(
    settings: Settings, *, days: int | None, now: datetime, versions: bool = False
) -> list[dict[str, Any]]:
    """One dict per complete backup, newest first, as `list-backups --json` prints them. With
    `versions`, also the backups a re-run of the date replaced (kept until retention), each
    after its date's current one, with the object version that `restore-from-backup
    --version` takes."""
    vault = Vault.from_settings(settings)
    manifests = vault.list_manifests()
    tiers = tiers_of((m.date for m in manifests), settings.retention)
    if days is not None:
        cutoff = now.date() - timedelta(days=days)
        manifests = [m for m in manifests if m.date > cutoff]
    proofs = restore_proofs(vault)
    rows = []
    for current in reversed(manifests):
        shown = reversed(current.versions) if versions else (current,)
        for m in shown:
            row = _row(m, vault, now, tier=str(tiers[m.date]), verified=proven_at(proofs, m))
            if versions:
                row["version_id"] = m.object_version_id
                row["current"] = m is current
            rows.append(row)
    return rows


def _row(
    m: Manifest, vault: Vault, now: datetime, *, tier: str, verified: datetime | None
) -> dict[str, Any]:
    return {
        "date": m.date.isoformat(),
        "key": m.object_key,
        "location": f"{vault.store.location}/{m.object_key}",
        "size_bytes": m.size_bytes,
        "dump_size_bytes": m.dump_size_bytes,
        "sha256": m.sha256,
        "created_at": m.finished_at.isoformat(),
        "age_hours": round((now - m.finished_at).total_seconds() / 3600, 1),
        "duration_seconds": round(m.duration_seconds, 3),
        "tier": tier,
        "row_total": m.row_total,
        "restore_verified_at": verified.isoformat() if verified else None,
    }


def first_backup_day(settings: Settings) -> date | None:
    """The oldest day with a manifest anywhere in the environment (the single database's or
    any fleet database's), from one listing; None before the first backup."""
    days = []
    for obj in open_store(settings).list(f"{settings.environment}/"):
        folders = obj.key.split("/")
        if folders[-1] != names.MANIFEST_NAME or len(folders) < 3:
            continue
        try:
            days.append(date.fromisoformat(folders[-2]))
        except ValueError:
            continue
    return min(days, default=None)
