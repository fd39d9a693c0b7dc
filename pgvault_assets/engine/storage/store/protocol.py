"""What the engine may ask of a store, and the records a store answers with.

Both stores speak this one interface so the engine never asks which it has; where the two
differ (versions, unfinished writes, Object Lock), the difference is a method here. Objects
are written through an `ObjectWriter` that makes nothing visible until `commit()`: a local
temporary file renamed into place, or an S3 multipart upload completed. `abort()` leaves no
trace.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import BinaryIO, Protocol

from pgvault_assets.engine.storage.bucket import BucketSettings
from pgvault_assets.engine.storage.store.locks import HeldLock


@dataclass(frozen=True)
class StoredObject:
    key: str
    size_bytes: int
    modified_at: datetime


class PendingKind(StrEnum):
    """What an unfinished write is, as an operator is told about it."""

    MULTIPART_UPLOAD = "unfinished multipart upload"
    PARTIAL_FILE = "partial file"


@dataclass(frozen=True)
class PendingUpload:
    """A write neither committed nor aborted (a writer killed mid-write): invisible to
    listings, yet it takes space, and an S3 one is billed. `key` is what it is known by: the
    key an S3 upload writes, the local partial file's own key."""

    key: str
    upload_id: str
    initiated_at: datetime
    kind: PendingKind = PendingKind.MULTIPART_UPLOAD


@dataclass(frozen=True)
class KeptVersion:
    """An earlier version of `key` the store keeps itself, so that a manifest pinning it still
    reads its own bytes after a re-run replaced the object. `stored_as` names it for an
    operator (the local store's `.versions/` file)."""

    key: str
    version_id: str
    stored_as: str
    modified_at: datetime


class ObjectWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    def commit(self) -> str | None:
        """Make the object visible; return its version id where the store keeps versions."""
        ...

    def abort(self) -> None: ...


class Store(Protocol):
    location: str
    """Where the store is, for an operator: a directory, or `s3://bucket`."""

    def open_writer(
        self, key: str, *, retain_until: datetime | None = None, expected_bytes: int | None = None
    ) -> ObjectWriter:
        """`retain_until`: lock the object against deletion until then, where the store can.
        `expected_bytes`: about how large it will be (the previous backup's size), so a store
        that writes in parts can size them; any size still fits."""
        ...

    def open_reader(self, key: str, version_id: str | None = None) -> BinaryIO: ...

    def put_bytes(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> None: ...

    def put_new(
        self,
        key: str,
        data: bytes,
        *,
        retain_until: datetime | None = None,
        lock_mode: str | None = None,
    ) -> bool:
        """Write `key` only if it does not exist; False if it does (the audit trail's
        create-only records). `retain_until`/`lock_mode`: Object Lock, where the store can."""
        ...

    def retained_until(self, key: str) -> datetime | None:
        """Until when some version of `key` cannot be deleted yet; None when it can be now."""
        ...

    def get_bytes(self, key: str) -> bytes | None: ...

    def exists(self, key: str) -> bool:
        """Whether `key`'s current object exists, without reading it."""
        ...

    def list(self, prefix: str) -> list[StoredObject]: ...

    def delete(self, key: str) -> int: ...

    def any_version_left(self, key: str) -> bool:
        """Whether anything of `key` is still stored (a version, a delete marker): what
        `delete` must leave nothing of."""
        ...

    def overwrite_unprotected(self, key: str) -> str | None:
        """Why writing `key` again would destroy the bytes stored there (it exists and the
        store keeps no earlier version), or None when a re-run's overwrite is safe."""
        ...

    def prune_versions(self, key: str, keep: Collection[str | None]) -> None:
        """Drop the versions of `key` this store keeps itself that no manifest pins (`keep`:
        the versions the date's manifest records), once a backup is recorded."""
        ...

    def kept_versions(self, prefix: str) -> builtins.list[KeptVersion]:
        """The versions under `prefix` this store keeps itself, for cleanup to judge."""
        ...

    def remove_version(self, version: KeptVersion) -> None: ...

    def withdraw(self, key: str, version_id: str | None, back_to: str | None) -> bool:
        """Undo the commit of `version_id` of `key` that no manifest records yet (a backup
        interrupted before its manifest), so `back_to` (the version the date's manifest
        records; None when there is none) is `key`'s object again. False when the store may
        not delete that version yet (Object Lock): it stays until cleanup can remove it."""
        ...

    def pending_uploads(self, prefix: str) -> builtins.list[PendingUpload]:
        """Every unfinished write under `prefix`, so a backup or cleanup can judge each one."""
        ...

    def abort_upload(self, upload: PendingUpload) -> None:
        """Remove one unfinished write; one already gone is no error."""
        ...

    def inspect_bucket(self) -> BucketSettings | None:
        """The bucket's settings read afresh (default encryption too) for `pgvault doctor`;
        None for a store that has no bucket."""
        ...

    def lock(
        self, name: str, *, wait_seconds: float = 0
    ) -> contextlib.AbstractContextManager[HeldLock]: ...
