"""The streaming stages: compress → encrypt → hash → write, and back again for a restore.

Each stage runs concurrently with the next, joined by bounded queues, so memory stays at a
few chunks plus the store's in-flight parts however large the database is, and nothing of
the dump ever touches local disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from aws_encryption_sdk.exceptions import AWSEncryptionSDKClientError
from cryptography.exceptions import InvalidTag
from isal import isal_zlib

from pgvault_assets.engine.storage.store import ObjectWriter
from pgvault_assets.engine.vault.copy_rows import CopyRowCounter
from pgvault_assets.engine.vault.crypto import ALGORITHM, FRAME_LENGTH, SDK
from pgvault_assets.engine.vault.keys import KeyProvider
from pgvault_assets.errors import IntegrityError, KeyUnavailable

CHUNK = 1024 * 1024
QUEUE_DEPTH = 8
# The SDK's iterator yields 8 KiB lines and re-slices its whole output buffer for each one;
# reading whole frames at a time costs a few copies per byte instead of dozens.
SDK_READ = 4 * FRAME_LENGTH
# A verify re-reads the whole object: one reused buffer, no allocation per read.
VERIFY_READ = 4 * CHUNK
GZIP_WBITS = 31  # 16 + 15: a standard gzip member that any gunzip reads

Progress = Callable[[int], None]


@dataclass
class StageClock:
    """Busy seconds per stage: where a slow backup spends its time."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, started: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started


@dataclass(frozen=True)
class PipelineResult:
    dump_bytes: int
    compressed_bytes: int
    stored_bytes: int
    sha256: str
    stage_seconds: dict[str, float]


class _QueueReader:
    """A file-like view of a queue of byte chunks; `read(n)` blocks until n bytes or the end."""

    def __init__(self, chunks: queue.Queue[bytes | BaseException | None]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()
        self._done = False
        self.waited = 0.0

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._buffer) < size):
            started = time.perf_counter()
            item = self._chunks.get()
            self.waited += time.perf_counter() - started
            if item is None:
                self._done = True
            elif isinstance(item, BaseException):
                raise item
            else:
                self._buffer += item
        if size < 0:
            size = len(self._buffer)
        with memoryview(self._buffer) as view:
            out = bytes(view[:size])
        del self._buffer[:size]
        return out

    def close(self) -> None:
        self._done = True


Chunks = queue.Queue[bytes | BaseException | None]


class _Stopped(Exception):
    """The consumer gave up; a producer thread just ends."""


def _put(out: Chunks, item: bytes | BaseException | None, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stopped
        with contextlib.suppress(queue.Full):
            out.put(item, timeout=0.1)
            return


def _get(source: Chunks, stop: threading.Event) -> bytes | BaseException | None:
    while True:
        if stop.is_set():
            raise _Stopped
        with contextlib.suppress(queue.Empty):
            return source.get(timeout=0.1)


def _read_into(
    source: BinaryIO,
    out: Chunks,
    clock: StageClock,
    rows: CopyRowCounter | None,
    stop: threading.Event,
) -> None:
    """Drain pg_dump's pipe as fast as it writes, so the dump never waits on compression;
    rows are counted here, where the thread mostly waits on the pipe anyway."""
    try:
        while True:
            started = time.perf_counter()
            chunk = source.read(CHUNK)
            clock.add("dump", started)
            if not chunk:
                break
            if rows is not None:
                started = time.perf_counter()
                rows.feed(chunk)
                clock.add("count_rows", started)
            _put(out, chunk, stop)
        _put(out, None, stop)
    except _Stopped:
        return
    except BaseException as exc:  # handed to the consumer, which raises it in its own thread
        with contextlib.suppress(_Stopped):
            _put(out, exc, stop)


def _compress_into(
    source: Chunks,
    out: Chunks,
    level: int,
    counts: dict[str, int],
    clock: StageClock,
    progress: Progress | None,
    stop: threading.Event,
) -> None:
    compressor = isal_zlib.compressobj(level, isal_zlib.DEFLATED, GZIP_WBITS)
    try:
        while (chunk := _get(source, stop)) is not None:
            if isinstance(chunk, BaseException):
                raise chunk
            counts["dump"] += len(chunk)
            started = time.perf_counter()
            packed = compressor.compress(chunk)
            clock.add("compress", started)
            if packed:
                counts["compressed"] += len(packed)
                _put(out, packed, stop)
            if progress:
                progress(len(chunk))
        tail = compressor.flush()
        counts["compressed"] += len(tail)
        _put(out, tail, stop)
        _put(out, None, stop)
    except _Stopped:
        return
    except BaseException as exc:
        with contextlib.suppress(_Stopped):
            _put(out, exc, stop)


def encrypt_stream(
    source: IO[bytes],
    writer: ObjectWriter,
    keys: KeyProvider,
    context: dict[str, str],
    *,
    level: int = 2,
    progress: Progress | None = None,
    rows: CopyRowCounter | None = None,
) -> PipelineResult:
    """Compress, encrypt, hash and write `source` until its end; the writer is not committed.

    With `rows`, the plain-SQL dump's COPY blocks are counted on the way through.
    """
    clock = StageClock()
    raw: Chunks = queue.Queue(QUEUE_DEPTH)
    compressed: Chunks = queue.Queue(QUEUE_DEPTH)
    counts = {"dump": 0, "compressed": 0}
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_read_into,
            args=(source, raw, clock, rows, stop),
            name="pgvault-read",
            daemon=True,
        ),
        threading.Thread(
            target=_compress_into,
            args=(raw, compressed, level, counts, clock, progress, stop),
            name="pgvault-compress",
            daemon=True,
        ),
    ]
    digest = hashlib.sha256()
    stored = 0
    for thread in threads:
        thread.start()
    try:
        source_view = _QueueReader(compressed)
        encryptor = SDK.stream(
            mode="e",
            source=source_view,
            key_provider=keys.master_key_provider(),
            encryption_context=context,
            algorithm=ALGORITHM,
            frame_length=FRAME_LENGTH,
        )
        while True:
            started = time.perf_counter()
            try:
                chunk = encryptor.read(SDK_READ)
            except AWSEncryptionSDKClientError as exc:
                raise KeyUnavailable(
                    f"encryption failed: the data key could not be obtained ({exc})"
                ) from None
            clock.add("encrypt", started)
            if not chunk:
                break
            started = time.perf_counter()
            digest.update(chunk)
            clock.add("hash", started)
            started = time.perf_counter()
            writer.write(chunk)
            clock.add("write", started)
            stored += len(chunk)
    finally:
        # Producers see the stop within 0.1 s; a reader blocked on a silent pg_dump ends
        # when the caller kills pg_dump (the threads are daemons and hold nothing).
        stop.set()
        for thread in threads:
            thread.join(1.0)
    # Time inside the encryptor includes waiting for compressed input; report its own share.
    clock.seconds["encrypt"] = max(0.0, clock.seconds.get("encrypt", 0.0) - source_view.waited)
    return PipelineResult(
        dump_bytes=counts["dump"],
        compressed_bytes=counts["compressed"],
        stored_bytes=stored,
        sha256=digest.hexdigest(),
        stage_seconds={k: round(v, 3) for k, v in clock.seconds.items()},
    )


class HashingReader:
    """Hashes and counts what passes through, so a download is checked while it streams."""

    def __init__(self, source: BinaryIO, progress: Progress | None = None) -> None:
        self._source = source
        self._progress = progress
        self.digest = hashlib.sha256()
        self.size = 0
        self.failure: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            chunk = self._source.read(size)
        except BaseException as exc:
            # The decryptor may report a failed download as a message that ends early:
            # the download's own error is the one to raise.
            self.failure = exc
            raise
        self.digest.update(chunk)
        self.size += len(chunk)
        if self._progress and chunk:
            self._progress(len(chunk))
        return chunk

    def drain(self) -> None:
        readinto = getattr(self._source, "readinto", None)
        if readinto is None:
            while self.read(CHUNK):
                pass
            return
        buffer = bytearray(VERIFY_READ)
        with memoryview(buffer) as view:
            while size := readinto(view):
                self.digest.update(view[:size])
                self.size += size
                if self._progress:
                    self._progress(size)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def decrypt_stream(source: BinaryIO, keys: KeyProvider, context: dict[str, str]) -> Iterator[bytes]:
    """Yield the dump's plain SQL; raise `IntegrityError` on any authentication failure.

    The encryption context is checked against the expected one before the first byte is
    yielded, so a backup of another day or environment is refused, not restored. Decryption
    runs ahead on its own thread, so a restore's psql is fed while the next frames decrypt.
    """
    out: Chunks = queue.Queue(QUEUE_DEPTH)
    stop = threading.Event()
    worker = threading.Thread(
        target=_decrypt_into,
        args=(source, keys, context, out, stop),
        name="pgvault-decrypt",
        daemon=True,
    )
    worker.start()
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(5.0)


def _decrypt_into(
    source: BinaryIO,
    keys: KeyProvider,
    context: dict[str, str],
    out: Chunks,
    stop: threading.Event,
) -> None:
    try:
        for plain in _decrypted(source, keys, context):
            _put(out, plain, stop)
        _put(out, None, stop)
    except _Stopped:
        return
    except BaseException as exc:  # raised again by the consumer, in its own thread
        with contextlib.suppress(_Stopped):
            _put(out, exc, stop)


def _decrypted(source: BinaryIO, keys: KeyProvider, context: dict[str, str]) -> Iterator[bytes]:
    decryptor = SDK.stream(mode="d", source=source, key_provider=keys.master_key_provider())
    decompressor = isal_zlib.decompressobj(GZIP_WBITS)
    checked = False
    try:
        while chunk := decryptor.read(SDK_READ):
            if not checked:
                actual = dict(decryptor.header.encryption_context)
                mismatched = sorted(k for k, v in context.items() if actual.get(k) != v)
                if mismatched:
                    raise IntegrityError(
                        f"the backup's encryption context differs in {', '.join(mismatched)}: "
                        "it is not the backup it claims to be; do not restore it"
                    )
                checked = True
            plain = decompressor.decompress(chunk)
            if plain:
                yield plain
            if decompressor.eof and decompressor.unused_data:
                raise IntegrityError("the backup has data after its end; do not restore it")
    except IntegrityError:
        raise
    except isal_zlib.error as exc:  # type: ignore[misc]  # isal's stubs do not type it as an exception
        raise IntegrityError(
            f"the backup's compressed stream is corrupt ({exc}); do not restore it"
        ) from None
    except (AWSEncryptionSDKClientError, InvalidTag, ValueError, LookupError, struct.error) as exc:
        # A damaged header or frame surfaces as whatever the parser tripped on.
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise IntegrityError(
            f"the backup failed authenticated decryption ({detail}); do not restore it"
        ) from None
    if source.read(1):
        raise IntegrityError("the backup has bytes after its encrypted message; do not restore it")
    tail = decompressor.flush()
    if tail:
        yield tail
    if not decompressor.eof:
        raise IntegrityError("the backup's compressed stream ends early; do not restore it")
