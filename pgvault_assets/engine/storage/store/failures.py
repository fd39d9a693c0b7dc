"""How a store's failures read: one line saying what failed and what to do, never a trace."""

from __future__ import annotations

import errno
from pathlib import Path

import botocore.exceptions

from pgvault_assets.errors import StoreError


def local_error(exc: OSError, what: str, path: Path) -> StoreError:
    if exc.errno == errno.ENOSPC:
        return StoreError(
            f"the local store's disk is full while {what} {path}; free space or set BACKUP_LOCAL_DIR elsewhere"
        )
    return StoreError(
        f"local store failed while {what} {path} ({exc.strerror}); check BACKUP_LOCAL_DIR"
    )


def s3_error(exc: Exception, what: str) -> StoreError:
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "error")
        hint = {
            "AccessDenied": "check the role's s3 permissions and the bucket policy",
            "NoSuchBucket": "check BACKUP_S3_BUCKET (run pgvault init-storage to create it)",
            "KMS.DisabledException": "the KMS key is disabled; enable it",
        }.get(code, "see the S3 error code")
        return StoreError(f"S3 {what} failed ({code}); {hint}")
    return StoreError(
        f"S3 {what} failed ({type(exc).__name__}: {exc}); check the network and AWS_ENDPOINT_URL"
    )
