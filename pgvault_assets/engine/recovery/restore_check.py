"""Prove a backup restores: onto a server of its own, row counts against the manifest, dropped.

A checksum proves the bytes are the ones written; only a restore proves they make a database.
The proof runs on RESTORE_CHECK_DATABASE_URL's server or, by default, on a throwaway cluster
(engine/postgres/cluster.py): never on the backed-up server, so "restore-verified" means "restores onto
an empty server", and proofs run one at a time.

The last successful proof is recorded beside the backup (`{env}/{D}/restore_verified.json`)
with the SHA-256 of the object it restored, so `list-backups` and the UI show it for that
object only: not for a backup that replaced it, nor for a record without one (older proofs).
The last failed proof is recorded apart (`restore_failed.json`), for the metrics' "last
result": under another name, so nothing that looks for proofs can take a failure for one.
Reading those records (`list-backups`) needs neither PostgreSQL nor the restore: the proof
imports them when it runs.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime

from pgvault_assets.engine.basics.clock import Clock, utcnow
from pgvault_assets.engine.basics.interrupts import said_as
from pgvault_assets.engine.basics.names import (
    RESTORE_VERIFIED_NAME,
    restore_failed_key,
    restore_verified_key,
)
from pgvault_assets.engine.postgres.cluster import major_of, proof_server
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import PgvaultError
from pgvault_assets.redact import redact
from pgvault_assets.settings import DatabaseUrl


@dataclass(frozen=True)
class RestoreProof:
    day: date
    verified_at: datetime
    database: str
    tables: int
    row_total: int
    duration_seconds: float
    sha256: str
    """The object restored: the proof is of it, not of whatever the date holds later."""


def throwaway_name(day: date) -> str:
    return f"pgvault_verify_{day.strftime('%Y%m%d')}_{uuid.uuid4().hex[:8]}"


def verify_restorable(
    vault: Vault,
    day: date,
    configured_server: DatabaseUrl | None = None,
    *,
    now: Clock = utcnow,
) -> RestoreProof:
    """Restore `day` into a fresh database on its proof server, then drop it.

    The server is `configured_server` (RESTORE_CHECK_DATABASE_URL) or else a throwaway
    cluster of the backup's major version. The engine's restore already refuses a checksum
    mismatch and compares every table's row count with the manifest; a scratch name that
    exists nowhere makes its swap a plain rename. A proof that fails leaves a failure record
    (`record_restore_failed`) before the error goes on.
    """
    manifest = vault.read_manifest(day)
    try:
        proof = _prove(vault, day, manifest, configured_server, now)
    except PgvaultError as exc:
        record_restore_failed(vault, day, now(), manifest.sha256, str(exc))
        raise
    record_restore_verified(vault, proof)
    return proof


def _prove(
    vault: Vault,
    day: date,
    manifest: Manifest,
    configured_server: DatabaseUrl | None,
    now: Clock,
) -> RestoreProof:
    from pgvault_assets.engine.postgres.postgres import connect, drop_database  # see the docstring
    from pgvault_assets.engine.restore.restore import restore_backup

    source_major = major_of(manifest.server_version)
    with (
        said_as(
            f"restore proof of {day.isoformat()} interrupted: its scratch database was dropped; "
            "the backup itself is stored, not yet proven restorable"
        ),
        proof_server(configured_server, source_major=source_major) as server_url,
    ):
        started = now()
        target = server_url.with_dbname(throwaway_name(day))
        try:
            result = restore_backup(vault, day, target, full_verify=False, now=now)
        finally:
            with (
                contextlib.suppress(PgvaultError),
                connect(server_url.with_dbname("postgres")) as maintenance,
            ):
                drop_database(maintenance, target.dbname)
        finished = now()
    return RestoreProof(
        day,
        finished,
        target.dbname,
        len(result.manifest.table_rows),
        result.manifest.row_total,
        round((finished - started).total_seconds(), 3),
        result.manifest.sha256,
    )


def record_restore_verified(vault: Vault, proof: RestoreProof) -> None:
    body = {
        "date": proof.day.isoformat(),
        "verified_at": proof.verified_at.astimezone(UTC).isoformat(),
        "tables": proof.tables,
        "row_total": proof.row_total,
        "duration_seconds": proof.duration_seconds,
        "sha256": proof.sha256,
    }
    key = restore_verified_key(vault.environment, proof.day)
    vault.store.put_bytes(key, json.dumps(body, indent=2).encode())


def record_restore_failed(
    vault: Vault, day: date, failed_at: datetime, sha256: str, reason: str
) -> None:
    """When a proof of `day` last failed and why (redacted): what the metrics' last result
    reads. Best effort: a store that cannot take it must not hide the proof's own error."""
    body = {
        "date": day.isoformat(),
        "failed_at": failed_at.astimezone(UTC).isoformat(),
        "sha256": sha256,
        "reason": redact(reason),
    }
    with contextlib.suppress(PgvaultError):
        vault.store.put_bytes(
            restore_failed_key(vault.environment, day), json.dumps(body, indent=2).encode()
        )


def restore_proofs(vault: Vault) -> dict[date, tuple[datetime, str]]:
    """The last proof of each date: when, and the SHA-256 of the object it restored. A record
    without a SHA-256 (written before proofs named their object) proves nothing shown."""
    found: dict[date, tuple[datetime, str]] = {}
    for obj in vault.store.list(f"{vault.environment}/"):
        if not obj.key.endswith("/" + RESTORE_VERIFIED_NAME):
            continue
        raw = vault.store.get_bytes(obj.key)
        if raw is None:
            continue
        try:
            data = json.loads(raw)
            proven = (datetime.fromisoformat(data["verified_at"]), str(data["sha256"]))
            found[date.fromisoformat(data["date"])] = proven
        except (ValueError, KeyError, TypeError):
            continue
    return found


def proven_at(proofs: dict[date, tuple[datetime, str]], manifest: Manifest) -> datetime | None:
    """When `manifest`'s object was proven to restore; None unless the proof is of its bytes."""
    proof = proofs.get(manifest.date)
    return proof[0] if proof is not None and proof[1] == manifest.sha256 else None


def restore_verified_dates(
    vault: Vault, manifests: list[Manifest] | None = None
) -> dict[date, datetime]:
    """When each backup was last proven to restore, for the object each date holds now;
    backups never proven, or replaced since their proof, are absent."""
    proofs = restore_proofs(vault)
    found = {}
    for manifest in vault.list_manifests() if manifests is None else manifests:
        if (verified := proven_at(proofs, manifest)) is not None:
            found[manifest.date] = verified
    return found
