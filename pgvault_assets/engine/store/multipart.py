"""Writing one S3 object as a multipart upload: nothing is visible until it completes, and an
aborted upload leaves no trace (an unfinished one is listed by `S3Store.pending_uploads`)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import botocore.exceptions

from pgvault_assets.engine.store.failures import s3_error
from pgvault_assets.engine.store.s3_access import S3Bucket
from pgvault_assets.errors import StoreError

PART_SIZE = 8 * 1024 * 1024


class _S3Writer:
    """A multipart upload fed part by part; at most two parts in flight bounds memory."""

    def __init__(self, store: S3Bucket, key: str, lock: dict[str, Any] | None = None) -> None:
        self._store = store
        self._key = key
        self._lock = lock or {}
        self._buffer = bytearray()
        self._parts: list[Future[dict]] = []
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

    def _upload(self, number: int, data: bytes, digest: bytes) -> dict:
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

    def _flush(self) -> None:
        if len(self._parts) >= 2:
            self._parts[-2].result()
        data = bytes(self._buffer)
        self._buffer.clear()
        digest = hashlib.sha256(data).digest()
        self._digests.append(digest)
        self._parts.append(self._pool.submit(self._upload, len(self._parts) + 1, data, digest))

    def write(self, data: bytes) -> None:
        self._buffer += data
        try:
            while len(self._buffer) >= PART_SIZE:
                self._flush()
        except Exception as exc:
            self.abort()
            raise s3_error(exc, f"upload of {self._key}") from None

    def commit(self) -> str | None:
        try:
            if self._buffer or not self._parts:
                self._flush()
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
        version_id = response.get("VersionId")
        if self._lock and version_id:
            self._store.ensure_retention(self._key, version_id, self._lock)
        return version_id

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            self._store.client.abort_multipart_upload(
                Bucket=self._store.bucket, Key=self._key, UploadId=self._upload_id
            )
