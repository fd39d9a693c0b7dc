"""A bucket's protective settings: read once, judged, and named when they fall short.

The store reads them on first use (to warn, and to know whether writes carry Object Lock),
`pgvault doctor` reads them to report, `pgvault init-storage` to decide what to set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from pgvault_assets.errors import StoreError

_NOT_CONFIGURED = {
    "NoSuchPublicAccessBlockConfiguration",
    "ObjectLockConfigurationNotFoundError",
    "ServerSideEncryptionConfigurationNotFoundError",
}
_PUBLIC_ACCESS_FLAGS = (
    "BlockPublicAcls",
    "IgnorePublicAcls",
    "BlockPublicPolicy",
    "RestrictPublicBuckets",
)


class BucketUnreachable(StoreError):
    """S3 did not answer at all while reading the bucket's settings."""


@dataclass(frozen=True)
class BucketSettings:
    """`None` for a setting means it could not be read (its name is then in `unreadable`).

    `versioning` is S3's status or "Off" for a bucket never versioned; `default_encryption`
    is (algorithm, key id), ("none", None) when the bucket has no default.
    """

    bucket: str
    exists: bool
    versioning: str | None = None
    public_access_blocked: bool | None = None
    object_lock: bool | None = None
    default_encryption: tuple[str, str | None] | None = None
    unreadable: tuple[str, ...] = ()

    @property
    def versioned(self) -> bool:
        return self.versioning == "Enabled"


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "error"))


def read_bucket_settings(
    client: Any, bucket: str, *, with_encryption: bool = True
) -> BucketSettings:
    """Read versioning, public access block, Object Lock (and default encryption) of `bucket`.

    A setting the caller may not read is reported as unreadable rather than failing: a
    least-privilege role must still be able to back up.
    """
    values: dict[str, Any] = {}
    unreadable: list[str] = []
    reads: list[tuple[str, str, Callable[[], Any]]] = [
        (
            "versioning",
            "s3:GetBucketVersioning",
            lambda: client.get_bucket_versioning(Bucket=bucket),
        ),
        (
            "public_access_blocked",
            "s3:GetBucketPublicAccessBlock",
            lambda: client.get_public_access_block(Bucket=bucket),
        ),
        (
            "object_lock",
            "s3:GetBucketObjectLockConfiguration",
            lambda: client.get_object_lock_configuration(Bucket=bucket),
        ),
    ]
    if with_encryption:
        reads.append(
            (
                "default_encryption",
                "s3:GetEncryptionConfiguration",
                lambda: client.get_bucket_encryption(Bucket=bucket),
            )
        )
    for name, permission, call in reads:
        try:
            response = call()
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code in ("NoSuchBucket", "404"):
                return BucketSettings(bucket, exists=False)
            if code in _NOT_CONFIGURED:
                values[name] = ("none", None) if name == "default_encryption" else False
            else:
                unreadable.append(f"{permission} ({code})")
            continue
        except botocore.exceptions.BotoCoreError as exc:
            raise BucketUnreachable(
                f"S3 did not answer for bucket {bucket} ({type(exc).__name__}); "
                "check the network and AWS_ENDPOINT_URL"
            ) from None
        values[name] = _interpret(name, response)
    return BucketSettings(bucket, exists=True, unreadable=tuple(unreadable), **values)


def _interpret(name: str, response: dict[str, Any]) -> Any:
    if name == "versioning":
        return response.get("Status") or "Off"
    if name == "public_access_blocked":
        flags = response.get("PublicAccessBlockConfiguration", {})
        return all(flags.get(flag) for flag in _PUBLIC_ACCESS_FLAGS)
    if name == "object_lock":
        config = response.get("ObjectLockConfiguration", {})
        return config.get("ObjectLockEnabled") == "Enabled"
    rules = response.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
    for rule in rules:
        default = rule.get("ApplyServerSideEncryptionByDefault", {})
        if default.get("SSEAlgorithm"):
            return default["SSEAlgorithm"], default.get("KMSMasterKeyID")
    return "none", None


def first_use_warnings(settings: BucketSettings) -> list[str]:
    """One line per setting that leaves the backups less safe than the manual's setup."""
    if not settings.exists:
        return []
    bucket = settings.bucket
    warnings = []
    if settings.versioning is not None and not settings.versioned:
        warnings.append(
            f"bucket {bucket} has versioning off: an overwritten or deleted backup cannot be "
            "brought back; run pgvault init-storage to enable it"
        )
    if settings.public_access_blocked is False:
        warnings.append(
            f"bucket {bucket} has no complete public access block: one wrong policy or ACL "
            "could expose the backups; run pgvault init-storage to set it"
        )
    if settings.unreadable:
        consequence = (
            "; backups are written without Object Lock" if settings.object_lock is None else ""
        )
        warnings.append(
            f"cannot check bucket {bucket}'s settings: grant the role "
            f"{', '.join(settings.unreadable)}{consequence}"
        )
    return warnings
