"""Backups in an S3 bucket, written with SSE-KMS under the backup key.

Reads pin object versions; what the bucket lacks (versioning, Object Lock) is read once and
logged once per process. Writing a large object is `multipart`'s job, reading one back
`reader`'s, and the lock object's lease `locks`'.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import boto3
import botocore.exceptions
from botocore.config import Config

from pgvault_assets.engine.storage.bucket import (
    BucketSettings,
    BucketUnreachable,
    first_use_warnings,
    read_bucket_settings,
)
from pgvault_assets.engine.storage.store.failures import s3_error
from pgvault_assets.engine.storage.store.locks import LOCK_TTL, HeldLock, s3_lock
from pgvault_assets.engine.storage.store.multipart import _S3Writer
from pgvault_assets.engine.storage.store.protocol import (
    KeptVersion,
    ObjectWriter,
    PendingUpload,
    StoredObject,
)
from pgvault_assets.engine.storage.store.reader import _ResumingReader

_log = logging.getLogger(__name__)
# A bucket's shortcomings are worth one line per process, not one per store a process opens.
_WARNED_BUCKETS: set[str] = set()

BOTO_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 6}, connect_timeout=10, read_timeout=60
)


class S3Store:
    """Backups in S3, written with SSE-KMS under the backup key; reads pin object versions."""

    def __init__(
        self,
        bucket: str,
        kms_key_id: str,
        client: object | None = None,
        *,
        read_timeout_seconds: int = 60,
        lock_mode: str = "governance",
    ) -> None:
        self.bucket = bucket
        self.kms_key_id = kms_key_id
        self.lock_mode = lock_mode.upper()
        self._bucket_settings: BucketSettings | None = None
        self.client: Any = client or boto3.client(
            "s3", config=BOTO_CONFIG.merge(Config(read_timeout=read_timeout_seconds))
        )
        self.location = f"s3://{bucket}"

    def bucket_settings(self) -> BucketSettings:
        """The bucket's settings, read on first use; what falls short is logged once a process."""
        if self._bucket_settings is not None:
            return self._bucket_settings
        try:
            found = read_bucket_settings(self.client, self.bucket, with_encryption=False)
        except BucketUnreachable:
            return BucketSettings(self.bucket, exists=False)
        if found.exists:
            self._bucket_settings = found
            if self.bucket not in _WARNED_BUCKETS:
                _WARNED_BUCKETS.add(self.bucket)
                for warning in first_use_warnings(found):
                    _log.warning(warning)
        return found

    def put_new(
        self,
        key: str,
        data: bytes,
        *,
        retain_until: datetime | None = None,
        lock_mode: str | None = None,
    ) -> bool:
        """Write `key` only if it does not exist (`If-None-Match: *`); False if it does."""
        extra = self.lock_arguments(retain_until, mode=lock_mode)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                IfNoneMatch="*",
                ServerSideEncryption="aws:kms",
                SSEKMSKeyId=self.kms_key_id,
                ChecksumAlgorithm="SHA256",
                **extra,
            )
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return False
            raise s3_error(exc, f"write of {key}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise s3_error(exc, f"write of {key}") from None
        return True

    def lock_arguments(
        self, retain_until: datetime | None, mode: str | None = None
    ) -> dict[str, Any]:
        """Object Lock parameters for a write, or none when the bucket has no Object Lock."""
        if retain_until is None or not self.bucket_settings().object_lock:
            return {}
        return {
            "ObjectLockMode": (mode or self.lock_mode).upper(),
            "ObjectLockRetainUntilDate": retain_until,
        }

    def ensure_retention(self, key: str, version_id: str, lock: dict[str, Any]) -> None:
        """Set the lock again if the server dropped it (moto and some S3-compatible servers
        ignore Object Lock on multipart uploads); a backup is never left unlocked silently."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, VersionId=version_id)
            if head.get("ObjectLockRetainUntilDate") is None:
                self.client.put_object_retention(
                    Bucket=self.bucket,
                    Key=key,
                    VersionId=version_id,
                    Retention={
                        "Mode": lock["ObjectLockMode"],
                        "RetainUntilDate": lock["ObjectLockRetainUntilDate"],
                    },
                )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise s3_error(exc, f"object lock of {key}") from None

    def retained_until(self, key: str) -> datetime | None:
        """The latest Object Lock date among `key`'s versions still in the future, if any."""
        if not self.bucket_settings().object_lock:
            return None
        now = datetime.now(UTC)
        latest: datetime | None = None
        try:
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=key
            )
            for page in pages:
                for item in page.get("Versions", []):
                    if item["Key"] != key:
                        continue
                    head = self.client.head_object(
                        Bucket=self.bucket, Key=key, VersionId=item["VersionId"]
                    )
                    until = head.get("ObjectLockRetainUntilDate")
                    if until is not None and until > now and (latest is None or until > latest):
                        latest = until
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise s3_error(exc, f"object lock check of {key}") from None
        return latest

    def open_writer(
        self, key: str, *, retain_until: datetime | None = None, expected_bytes: int | None = None
    ) -> ObjectWriter:
        return _S3Writer(
            self, key, self.lock_arguments(retain_until), expected_bytes=expected_bytes
        )

    def open_reader(self, key: str, version_id: str | None = None) -> BinaryIO:
        return _ResumingReader(self, key, version_id)  # type: ignore[return-value]

    def put_bytes(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> None:
        lock = self.lock_arguments(retain_until)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ServerSideEncryption="aws:kms",
                SSEKMSKeyId=self.kms_key_id,
                ChecksumAlgorithm="SHA256",
                **lock,
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise s3_error(exc, f"write of {key}") from None

    def get_bytes(self, key: str) -> bytes | None:
        self.bucket_settings()
        found = self.get_with_response(key)
        return None if found is None else found[0]

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "NotFound", "404"):
                return False
            raise s3_error(exc, f"check of {key}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise s3_error(exc, f"check of {key}") from None
        return True

    def get_with_response(self, key: str) -> tuple[bytes, dict[str, Any]] | None:
        """The current version's bytes and S3's response (version, ETag, dates); None if absent."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(), response
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise s3_error(exc, f"read of {key}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise s3_error(exc, f"read of {key}") from None

    def list(self, prefix: str) -> list[StoredObject]:
        self.bucket_settings()
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                for item in page.get("Contents", []):
                    found.append(StoredObject(item["Key"], item["Size"], item["LastModified"]))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise s3_error(exc, f"listing of {prefix}") from None
        return found

    def delete(self, key: str) -> int:
        """Delete every version and delete marker of `key`: expired means gone, not hidden."""
        deleted = 0
        try:
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=key
            )
            for page in pages:
                for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    if item["Key"] != key:
                        continue
                    self.client.delete_object(
                        Bucket=self.bucket, Key=key, VersionId=item["VersionId"]
                    )
                    deleted += 1
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise s3_error(exc, f"delete of {key}") from None
        return deleted

    def any_version_left(self, key: str) -> bool:
        """Any version or delete marker of `key`: a versioned bucket hides what it keeps."""
        try:
            listing = self.client.list_object_versions(Bucket=self.bucket, Prefix=key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise s3_error(exc, f"listing of the versions of {key}") from None
        items = listing.get("Versions", []) + listing.get("DeleteMarkers", [])
        return any(item["Key"] == key for item in items)

    def overwrite_unprotected(self, key: str) -> str | None:
        """Without versioning, a re-run's upload replaces the stored backup before its
        manifest is written: a crash in between would leave no readable backup at all."""
        if self.get_bytes(key) is None:
            return None
        if self.bucket_settings().versioning in ("Off", "Suspended"):
            return f"bucket {self.bucket} has no versioning"
        return None

    def prune_versions(self, key: str, keep: Collection[str | None]) -> None:
        """Nothing to do: the bucket keeps earlier versions, and retention deletes them."""

    def kept_versions(self, prefix: str) -> builtins.list[KeptVersion]:
        """None: earlier versions are the bucket's to keep and its lifecycle's to expire."""
        return []

    def remove_version(self, version: KeptVersion) -> None:
        try:
            self.client.delete_object(
                Bucket=self.bucket, Key=version.key, VersionId=version.version_id
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise s3_error(exc, f"delete of a version of {version.key}") from None

    def withdraw(self, key: str, version_id: str | None, back_to: str | None) -> bool:
        """Delete that version: the one before it is current again, as `back_to` expects. A
        version under Object Lock refuses (AccessDenied), and is left to its lock."""
        version = {} if version_id is None else {"VersionId": version_id}
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, **version)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "AccessDenied" and self.bucket_settings().object_lock:
                return False
            raise s3_error(exc, f"withdrawal of an unrecorded version of {key}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise s3_error(exc, f"withdrawal of an unrecorded version of {key}") from None
        return True

    def pending_uploads(self, prefix: str) -> builtins.list[PendingUpload]:
        """Every unfinished multipart upload under `prefix`, so cleanup can judge each one."""
        found = []
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                for upload in page.get("Uploads", []):
                    found.append(
                        PendingUpload(upload["Key"], upload["UploadId"], upload["Initiated"])
                    )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise s3_error(exc, f"listing of unfinished uploads under {prefix}") from None
        return found

    def abort_upload(self, upload: PendingUpload) -> None:
        """Abort one unfinished upload; one already gone is no error."""
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id
            )
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise s3_error(exc, f"abort of the unfinished upload of {upload.key}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise s3_error(exc, f"abort of the unfinished upload of {upload.key}") from None

    def inspect_bucket(self) -> BucketSettings | None:
        """Read afresh, unlike `bucket_settings`: the doctor reports what is true right now."""
        return read_bucket_settings(self.client, self.bucket)

    def lock(
        self,
        name: str,
        *,
        wait_seconds: float = 0,
        ttl: timedelta = LOCK_TTL,
        heartbeat: timedelta | None = None,
    ) -> contextlib.AbstractContextManager[HeldLock]:
        """A lock object whose short lease a heartbeat renews (every `ttl`/3 unless `heartbeat`):
        a holder that died on any host blocks the others for one lease at most, and a holder
        that lost its lock learns it from `HeldLock.check()` before its next visible step."""
        return s3_lock(self, name, wait_seconds=wait_seconds, ttl=ttl, heartbeat=heartbeat)
