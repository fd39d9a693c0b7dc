"""What backups there are: the rows behind `list-backups` and its JSON."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta

from pgvault_assets.engine.retention import tier_of
from pgvault_assets.engine.vault import Vault
from pgvault_assets.settings import Settings

RESTORE_VERIFIED_NAME = "restore_verified.json"


def restore_verified_key(environment: str, day: date) -> str:
    return f"{environment}/{day.isoformat()}/{RESTORE_VERIFIED_NAME}"


def restore_verified_at(vault: Vault, day: date) -> datetime | None:
    """When the backup of `day` was last proven restorable, if ever."""
    raw = vault.store.get_bytes(restore_verified_key(vault.environment, day))
    if raw is None:
        return None
    try:
        return datetime.fromisoformat(json.loads(raw)["verified_at"])
    except (ValueError, KeyError, TypeError):
        return None


def backup_rows(settings: Settings, *, days: int | None, now: datetime) -> list[dict]:
    """One dict per complete backup, newest first, as `list-backups --json` prints them."""
    vault = Vault.from_settings(settings)
    manifests = vault.list_manifests()
    if days is not None:
        cutoff = now.date() - timedelta(days=days)
        manifests = [m for m in manifests if m.date > cutoff]
    rows = []
    for m in reversed(manifests):
        verified = restore_verified_at(vault, m.date)
        rows.append(
            {
                "date": m.date.isoformat(),
                "key": m.object_key,
                "location": f"{vault.store.location}/{m.object_key}",
                "size_bytes": m.size_bytes,
                "dump_size_bytes": m.dump_size_bytes,
                "sha256": m.sha256,
                "created_at": m.finished_at.isoformat(),
                "age_hours": round((now - m.finished_at).total_seconds() / 3600, 1),
                "duration_seconds": round(m.duration_seconds, 3),
                "tier": str(tier_of(m.date, settings.retention)),
                "row_total": m.row_total,
                "restore_verified_at": verified.isoformat() if verified else None,
            }
        )
    return rows
