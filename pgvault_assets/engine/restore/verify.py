"""Verify a stored backup against its manifest, and feed it to psql in the same single read."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import date

from pgvault_assets.engine.restore.parallel_load import ParallelLoad
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.engine.vault.pipeline import HashingReader, Progress, decrypt_stream
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import IntegrityError
from pgvault_assets.settings import DatabaseUrl


@dataclass(frozen=True)
class VerifyResult:
    manifest: Manifest
    sha256: str
    size_bytes: int
    decrypted: bool
    dump_size_bytes: int | None


def _refuse_mismatch(manifest: Manifest, sha256: str, size: int) -> None:
    if size != manifest.size_bytes:
        raise IntegrityError(
            f"backup {manifest.date} is {size} bytes but its manifest says {manifest.size_bytes} "
            "(truncated or replaced); do not restore it, take or pick another backup"
        )
    if sha256 != manifest.sha256:
        raise IntegrityError(
            f"backup {manifest.date} failed its SHA-256 check (stored {sha256[:12]}…, manifest "
            f"{manifest.sha256[:12]}…); do not restore it, take or pick another backup"
        )


def verify_backup(
    vault: Vault, day: date, *, full: bool = True, progress: Progress | None = None
) -> VerifyResult:
    """Check the stored object against its manifest; with `full`, also decrypt it all."""
    manifest = vault.read_manifest(day)
    if full:
        sha256, size, plain = _read_checked(vault, manifest, progress)
        return VerifyResult(manifest, sha256, size, True, plain)
    with contextlib.closing(
        vault.store.open_reader(manifest.object_key, manifest.object_version_id)
    ) as raw:
        reader = HashingReader(raw, progress)
        reader.drain()
    _refuse_mismatch(manifest, reader.hexdigest(), reader.size)
    return VerifyResult(manifest, reader.hexdigest(), reader.size, False, None)


def _read_checked(
    vault: Vault, manifest: Manifest, progress: Progress | None, sink: ParallelLoad | None = None
) -> tuple[str, int, int]:
    """One read of the object: SHA-256 and size over the ciphertext, each authenticated frame's
    plaintext to `sink` when there is one. Returns (SHA-256, size, plaintext bytes) only once
    all of it matched the manifest: verify-backup and a restore refuse a damaged backup alike."""
    with contextlib.closing(
        vault.store.open_reader(manifest.object_key, manifest.object_version_id)
    ) as raw:
        reader = HashingReader(raw, progress)
        keys = vault.decryption_keys(manifest)
        plain = 0
        plaintext = decrypt_stream(reader, keys, manifest.encryption_context)
        try:
            with contextlib.closing(plaintext):
                for chunk in plaintext:
                    if sink is not None:
                        sink.write(chunk)
                    plain += len(chunk)
        except IntegrityError:
            if sink is not None:
                sink.abort()
            if reader.failure is not None:
                raise reader.failure from None
            # A replaced or truncated object is named as such, not as a failed decryption.
            reader.drain()
            _refuse_mismatch(manifest, reader.hexdigest(), reader.size)
            raise
        reader.drain()
    _refuse_mismatch(manifest, reader.hexdigest(), reader.size)
    if plain != manifest.dump_size_bytes:
        raise IntegrityError(
            f"backup {manifest.date} decrypts to {plain} bytes, not the "
            f"{manifest.dump_size_bytes} its manifest records; do not restore it"
        )
    return reader.hexdigest(), reader.size, plain


def feed_psql(
    vault: Vault, manifest: Manifest, url: DatabaseUrl, psql: str, progress: Progress | None
) -> dict[str, int]:
    """Verify and restore in one read of the object: SHA-256 over the ciphertext while only
    authenticated frames, gunzipped, reach the psql sessions loading the side database.

    The caller swaps only after this returns, that is after the whole object's SHA-256 and
    size matched the manifest and the final frame authenticated; anything else raises and the
    side database is dropped. The statements after the data run only once all of it proved
    intact; any session stopping on an error ends the download at once. Returns the rows each
    table's COPY loaded, as the server counted them; the side database is analyzed.
    """
    load = vault.restore_load
    sink = ParallelLoad(psql, url, load.loaders, load.read_ahead_bytes)
    try:
        _read_checked(vault, manifest, progress, sink)
        sink.finish()
    except BaseException:
        sink.abort()
        raise
    return sink.copied_rows


def compare_counts(expected: dict[str, int], actual: dict[str, int]) -> list[str]:
    problems = []
    for table in sorted(set(expected) | set(actual)):
        if expected.get(table) != actual.get(table):
            problems.append(
                f"{table}: backup {expected.get(table, 'missing')}, restored {actual.get(table, 'missing')}"
            )
    return problems
