"""Where backups live: a local directory (the embedded default) or an S3 bucket.

Callers see only the `Store` protocol and its records; `open_store` picks the store the
settings ask for, so nothing outside this package names a concrete store. The S3 store, and
boto3 with it, is imported only when the settings name a bucket: the embedded default never
pays for it.
"""

from __future__ import annotations

from pgvault_assets.engine.storage.store.local import LocalStore, private_dirs
from pgvault_assets.engine.storage.store.locks import HeldLock
from pgvault_assets.engine.storage.store.protocol import (
    KeptVersion,
    ObjectWriter,
    PendingKind,
    PendingUpload,
    Store,
    StoredObject,
)
from pgvault_assets.errors import ConfigError
from pgvault_assets.settings import Settings

__all__ = [
    "HeldLock",
    "KeptVersion",
    "ObjectWriter",
    "PendingKind",
    "PendingUpload",
    "Store",
    "StoredObject",
    "open_store",
    "private_dirs",
]


def open_store(settings: Settings) -> Store:
    """The store `settings` configure: their S3 bucket, else their local directory."""
    if not settings.uses_s3:
        return LocalStore(settings.local_dir)
    from pgvault_assets.engine.storage.store.s3 import S3Store  # boto3: see the module docstring

    bucket, key_id = settings.s3_bucket, settings.kms_key_id
    if not (bucket and key_id):  # `load_settings` refuses this; settings built by hand may not
        raise ConfigError(
            "BACKUP_KMS_KEY_ID is not set; set both BACKUP_S3_BUCKET and BACKUP_KMS_KEY_ID for "
            "S3, or neither for the local store"
        )
    return S3Store(
        bucket,
        key_id,
        read_timeout_seconds=settings.s3_read_timeout_seconds,
        lock_mode=settings.object_lock_mode,
    )
