"""The part of the S3 store its helpers (multipart writer, resuming reader, lease) work through.

A structural type, so those helpers need not import the store that builds them.
"""

from __future__ import annotations

from typing import Any, Protocol


class S3Bucket(Protocol):
    client: Any  # a boto3 S3 client
    bucket: str
    kms_key_id: str

    def get_with_response(self, key: str) -> tuple[bytes, dict[str, Any]] | None: ...

    def ensure_retention(self, key: str, version_id: str, lock: dict[str, Any]) -> None: ...
