"""Synthetic backup histories: manifests and tiny objects written straight into a store.

Retention, reports and sensors reason about many days of backups; taking real dumps for a
year of them would prove nothing more and take minutes.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, time, timedelta

from pgvault_assets.engine.basics import names
from pgvault_assets.engine.vault import manifest as mf
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.engine.vault.vault import Vault


def fake_manifest(
    environment: str,
    day: date,
    *,
    size_bytes: int = 1000,
    dump_size_bytes: int = 4000,
    duration_seconds: float = 60.0,
    body: bytes = b"",
) -> Manifest:
    """A valid manifest of `day`, its backup taken at 02:00 the next morning (UTC)."""
    started = datetime.combine(day + timedelta(days=1), time(2, 0), UTC)
    return Manifest(
        environment=environment,
        date=day,
        object_key=names.object_key(environment, day),
        sha256=hashlib.sha256(body).hexdigest(),
        size_bytes=size_bytes,
        dump_size_bytes=dump_size_bytes,
        compressed_size_bytes=size_bytes,
        started_at=started,
        finished_at=started + timedelta(seconds=duration_seconds),
        stage_seconds={"total": duration_seconds},
        server_version="PostgreSQL 15",
        pg_dump_version="pg_dump (PostgreSQL) 15",
        database="app",
        table_rows={"public.t": 3},
        key_id="local",
        pgvault_version="0.1.0",
        encryption_context=mf.encryption_context(environment, day),
    )


def write_backup(vault: Vault, manifest: Manifest, body: bytes = b"backup") -> None:
    """A stored backup as a real one leaves it, its local key included: pgvault refuses to
    mint a key beside backups, so a real backup after these finds the key they were made with."""
    if vault.local_key is not None:
        vault.local_key.ensure()
    vault.store.put_bytes(manifest.object_key, body)
    vault.store.put_bytes(vault.manifest_key(manifest.date), manifest.to_json())


def write_history(vault: Vault, first: date, last: date, **kwargs) -> list[Manifest]:
    """One backup for every day from `first` to `last` inclusive."""
    manifests = []
    day = first
    while day <= last:
        manifest = fake_manifest(vault.environment, day, **kwargs)
        write_backup(vault, manifest)
        manifests.append(manifest)
        day += timedelta(days=1)
    return manifests
