"""Writing one S3 object as a multipart upload: nothing is visible until it completes, and an
aborted upload leaves no trace (an unfinished one is listed by `S3Store.pending_uploads`).

S3 allows 10,000 parts of at most 5 GiB and objects of at most 5 TiB. Fixed 8 MiB parts
would stop at 78 GiB, so part sizes double every 500 parts up to 1 GiB: 10,000 parts then
hold about 7 TiB, more than S3's largest object, while a small backup keeps small parts.
Memory stays at about three parts (the one being filled and at most two uploading), so the
1 GiB cap, not S3's 5 GiB, bounds it: 3 GiB at most, reached only past about 500 GiB.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import botocore.exceptions

from pgvault_assets.engine.basics.testpoints import pause_point, pausing_at
from pgvault_assets.engine.storage.store.failures import s3_error
from pgvault_assets.engine.storage.store.s3_access import S3Bucket
from pgvault_assets.errors import StoreError

MIN_PART_SIZE = 8 * 1024 * 1024  # above S3's 5 MiB floor for every part but the last
MAX_PART_SIZE = 5 * 1024**3  # S3's ceiling for one part
LARGEST_PART = 1024**3  # pgvault's own ceiling: what bounds a backup's memory
MAX_PARTS = 10_000  # S3's ceiling for one upload
PARTS_PER_SIZE = 500  # parts uploaded at one size before the size doubles


def part_size(number: int, first: int = MIN_PART_SIZE) -> int:
    """The size of part `number` (from 1) of an upload whose first parts are `first` bytes."""
    return min(LARGEST_PART, first << ((number - 1) // PARTS_PER_SIZE))


def capacity(first: int) -> int:
    """The most an upload whose first parts are `first` bytes can hold in S3's part limit."""
    total, size = 0, first
    for start in range(0, MAX_PARTS, PARTS_PER_SIZE):
        total += min(size, LARGEST_PART) * min(PARTS_PER_SIZE, MAX_PARTS - start)
        size *= 2
    return total


def first_part_size(expected_bytes: int | None) -> int:
    """The smallest first part whose plan holds twice `expected_bytes` (the previous backup's
    size): growth past the previous size is then a margin, not a gamble."""
    size = MIN_PART_SIZE
    while capacity(size) < 2 * (expected_bytes or 0) and size < LARGEST_PART:
        size *= 2
    return size


class _S3Writer:
    """A multipart upload fed part by part; at most two parts in flight bounds memory."""

    def __init__(
        self,
        store: S3Bucket,
        key: str,
        lock: dict[str, Any] | None = None,
        *,
        expected_bytes: int | None = None,
    ) -> None:
        self._store = store
        self._key = key
        self._lock = lock or {}
        self._first_part = first_part_size(expected_bytes)
        self._buffer = bytearray()
        self._parts: list[Future[dict[str, Any]]] = []
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="s3-part")
        self._digests: list[bytes] = []
        try:
            self._upload_id = store.client.create_multipart_upload(
                Bucket=store.bucket,
                Key=key,
                ServerSideEncryption="aws:kms",
                SSEKMSKeyId=store.kms_key_id,
                ChecksumAlgorithm="SHA256",
                **self._lock,
            )["UploadId"]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise s3_error(exc, f"upload of {key}") from None

    def _upload(self, number: int, data: bytes, digest: bytes) -> dict[str, Any]:
        checksum = base64.b64encode(digest).decode()
        response = self._store.client.upload_part(
            Bucket=self._store.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
            ChecksumSHA256=checksum,
        )
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}

    def _next_part_size(self) -> int:
        return part_size(len(self._parts) + 1, self._first_part)

    def _flush(self, size: int) -> None:
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise StoreError(
                f"upload of {self._key} needs more than S3's {MAX_PARTS} parts (its parts reached "
                f"{part_size(MAX_PARTS, self._first_part)} bytes); the backup is larger than one "
                "S3 object can be"
            )
        if len(self._parts) >= 2:
            self._parts[-2].result()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        digest = hashlib.sha256(data).digest()
        self._digests.append(digest)
        self._parts.append(self._pool.submit(self._upload, number, data, digest))

    def write(self, data: bytes) -> None:
        self._buffer += data
        try:
            while len(self._buffer) >= self._next_part_size():
                self._flush(self._next_part_size())
            if self._parts and pausing_at("upload"):
                self._parts[0].result()  # paused with a part stored, whenever the dump ends
                pause_point("upload")
        except Exception as exc:
            self.abort()
            raise s3_error(exc, f"upload of {self._key}") from None

    def commit(self) -> str | None:
        try:
            if self._buffer or not self._parts:
                self._flush(len(self._buffer))
            parts = [future.result() for future in self._parts]
            response = self._store.client.complete_multipart_upload(
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
        except Exception as exc:
            self.abort()
            raise s3_error(exc, f"upload of {self._key}") from None
        finally:
            self._pool.shutdown(wait=True)
        expected = base64.b64encode(hashlib.sha256(b"".join(self._digests)).digest()).decode()
        reported = response.get("ChecksumSHA256")
        if reported and reported.split("-")[0] != expected:
            raise StoreError(f"S3 reported a different checksum for {self._key}; re-run the backup")
        version_id: str | None = response.get("VersionId")
        if self._lock and version_id:
            self._store.ensure_retention(self._key, version_id, self._lock)
        return version_id

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            self._store.client.abort_multipart_upload(
                Bucket=self._store.bucket, Key=self._key, UploadId=self._upload_id
            )
