"""The streaming stages carry every byte of a many-frame dump, in the standard formats."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import threading
import time
from pathlib import Path

import pytest

from pgvault_assets.engine.storage.store.local import LocalStore
from pgvault_assets.engine.vault.crypto import FRAME_LENGTH, SDK
from pgvault_assets.engine.vault.keys import LocalKeyProvider
from pgvault_assets.engine.vault.pipeline import (
    SDK_READ,
    HashingReader,
    decrypt_stream,
    encrypt_stream,
)
from pgvault_assets.errors import IntegrityError

CONTEXT = {"pgvault:environment": "test", "pgvault:date": "2025-11-06"}


def _dump_like(size: int) -> bytes:
    """Half repetitive SQL, half random bytes: compressed, it still spans many frames."""
    rng = random.Random(7)
    rows = b"".join(b'%d\tdocument %d\t{"k": %d}\n' % (i, i % 97, i) for i in range(size // 60))
    noise = rng.randbytes(size // 2)
    return (rows[: size // 2] + noise)[:size]


@pytest.fixture
def keys(tmp_path: Path) -> LocalKeyProvider:
    provider = LocalKeyProvider(tmp_path / "key" / "backup.key")
    provider.ensure()
    return provider


def _store_object(tmp_path: Path, keys: LocalKeyProvider, source) -> tuple[Path, object]:
    store = LocalStore(tmp_path / "store")
    writer = store.open_writer("test/obj")
    result = encrypt_stream(source, writer, keys, CONTEXT, level=2)
    writer.commit()
    return tmp_path / "store" / "test" / "obj", result


def test_many_frame_backup_decrypts_with_plain_sdk_and_gunzip(tmp_path: Path, keys) -> None:
    data = _dump_like(12 * 1024 * 1024 + 12345)
    path, result = _store_object(tmp_path, keys, io.BytesIO(data))
    stored = path.read_bytes()

    assert result.stored_bytes == len(stored)
    assert result.sha256 == hashlib.sha256(stored).hexdigest()
    assert result.dump_bytes == len(data)
    assert result.compressed_bytes > 4 * FRAME_LENGTH  # many frames, several SDK reads
    plain_gzip = b"".join(
        SDK.stream(mode="d", source=io.BytesIO(stored), key_provider=keys.master_key_provider())
    )
    assert len(plain_gzip) == result.compressed_bytes
    assert gzip.decompress(plain_gzip) == data
    assert b"".join(decrypt_stream(io.BytesIO(stored), keys, CONTEXT)) == data


def test_truncated_many_frame_backup_is_refused(tmp_path: Path, keys) -> None:
    path, _ = _store_object(tmp_path, keys, io.BytesIO(_dump_like(6 * 1024 * 1024)))
    stored = path.read_bytes()
    with pytest.raises(IntegrityError):
        for _ in decrypt_stream(io.BytesIO(stored[: len(stored) // 2]), keys, CONTEXT):
            pass


class _NoReadinto:
    """A download stream that offers only `read`, as some object stores' bodies do."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._inner.read(size)


def test_checksum_drain_hashes_every_byte_with_or_without_readinto(tmp_path: Path) -> None:
    data = os.urandom(9 * 1024 * 1024 + 7)
    path = tmp_path / "object"
    path.write_bytes(data)
    progress: list[int] = []
    with open(path, "rb") as raw:
        from_file = HashingReader(raw, progress.append)
        from_file.drain()
    from_stream = HashingReader(_NoReadinto(data))
    from_stream.drain()

    expected = hashlib.sha256(data).hexdigest()
    assert (from_file.hexdigest(), from_file.size) == (expected, len(data))
    assert (from_stream.hexdigest(), from_stream.size) == (expected, len(data))
    assert sum(progress) == len(data)


def test_decryption_reads_ahead_of_the_consumer_and_stops_when_abandoned(
    tmp_path: Path, keys
) -> None:
    path, _ = _store_object(tmp_path, keys, io.BytesIO(_dump_like(16 * 1024 * 1024)))
    reader = HashingReader(io.BytesIO(path.read_bytes()))
    plain = decrypt_stream(reader, keys, CONTEXT)
    next(plain)  # the consumer holds its first chunk, as a restore blocked on psql would
    deadline = time.monotonic() + 30
    while reader.size <= 3 * SDK_READ and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reader.size > 3 * SDK_READ  # later frames were read while the consumer was busy
    plain.close()
    assert not [t for t in threading.enumerate() if t.name == "pgvault-decrypt"]
