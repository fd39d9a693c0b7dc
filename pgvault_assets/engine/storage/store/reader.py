"""Reading one S3 object's body so that a cut or stalled connection resumes where it stopped."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import botocore.exceptions

from pgvault_assets.engine.storage.store.failures import s3_error
from pgvault_assets.engine.storage.store.s3_access import S3Bucket

# botocore retries a request until its response headers arrive; a body cut or stalled after
# that surfaces from `read()`, so a download resumes itself from where it stopped.
RESUMABLE_READ_ERRORS = (
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.EndpointConnectionError,
)
RESUME_ATTEMPTS = 5


class _ResumingReader:
    """An object's body that survives a cut or stalled connection: it asks again, with backoff,
    for the bytes from where the last response stopped, pinned to the same version and ETag,
    so the bytes read are always one object's, never a splice of two."""

    def __init__(self, store: S3Bucket, key: str, version_id: str | None) -> None:
        self._store = store
        self._key = key
        self._pin: dict[str, str] = {"VersionId": version_id} if version_id else {}
        self._offset = 0
        self._body = self._open()

    def _open(self) -> Any:  # botocore's StreamingBody, which ships no types
        extra = dict(self._pin)
        if self._offset:
            extra["Range"] = f"bytes={self._offset}-"
        try:
            response = self._store.client.get_object(
                Bucket=self._store.bucket, Key=self._key, **extra
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise s3_error(exc, f"download of {self._key}") from None
        self._pin.setdefault("IfMatch", response["ETag"])
        return response["Body"]

    def read(self, size: int = -1) -> bytes:
        attempt = 0
        while True:
            try:
                chunk: bytes = self._body.read(size if size >= 0 else None)
            except RESUMABLE_READ_ERRORS as exc:
                attempt += 1
                if attempt > RESUME_ATTEMPTS:
                    raise s3_error(exc, f"download of {self._key}") from None
                with contextlib.suppress(Exception):
                    self._body.close()
                time.sleep(min(0.5 * 2 ** (attempt - 1), 8))
                self._body = self._open()
                continue
            self._offset += len(chunk)
            return chunk

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()
