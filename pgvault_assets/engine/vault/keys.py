"""The keys backups are encrypted with: a local key file or a KMS key, and which one a backup
needs to be read.

Apart from crypto.py, which holds the AWS Encryption SDK: opening a vault names its keys, and a
command that only reads manifests (`list-backups`) opens one; the SDK and botocore load only
when a key first wraps or unwraps a data key.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pgvault_assets.engine.storage.store import private_dirs
from pgvault_assets.errors import ConfigError, IntegrityError, KeyUnavailable

if TYPE_CHECKING:
    from aws_encryption_sdk.key_providers.base import MasterKeyProvider


class KeyProvider(Protocol):
    """Gives the Encryption SDK a master key provider and names the key for the manifest."""

    @property
    def key_id(self) -> str: ...

    def master_key_provider(self) -> MasterKeyProvider: ...


@dataclass(frozen=True)
class LocalKeyProvider:
    """A 256-bit key in a file: created owner-only on first use, never overwritten."""

    path: Path

    @property
    def key_id(self) -> str:
        return f"local:{self.fingerprint()}"

    def fingerprint(self) -> str:
        return hashlib.sha256(b"pgvault-key-fingerprint" + self._read()).hexdigest()[:16]

    def ensure(self) -> None:
        """Create the key file if it does not exist (exclusive create: never overwrite)."""
        if self.path.exists():
            return
        try:
            private_dirs(self.path.parent)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        except OSError as exc:
            raise KeyUnavailable(
                f"cannot create the key file {self.path} ({exc.strerror}); "
                "check BACKUP_LOCAL_KEY_FILE and its folder's permissions"
            ) from None
        with os.fdopen(fd, "wb") as out:
            out.write(os.urandom(32))
            out.flush()
            os.fsync(out.fileno())

    def _read(self) -> bytes:
        try:
            info = self.path.stat()
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyUnavailable(
                    f"the key file {self.path} is readable by other users; "
                    f"run: chmod 600 {self.path}"
                )
            key = self.path.read_bytes()
        except FileNotFoundError:
            raise KeyUnavailable(
                f"the key file {self.path} does not exist; restore it from your key backup "
                "(or set BACKUP_LOCAL_KEY_FILE to where it is)"
            ) from None
        except PermissionError:
            raise KeyUnavailable(
                f"cannot read the key file {self.path}; check its permissions"
            ) from None
        if len(key) != 32:
            raise KeyUnavailable(
                f"the key file {self.path} does not hold a 256-bit key ({len(key)} bytes); "
                "restore the right file"
            )
        return key

    def master_key_provider(self) -> MasterKeyProvider:
        from pgvault_assets.engine.vault.crypto import (
            local_master_key_provider,  # the SDK: see above
        )

        return local_master_key_provider(self._read())


@dataclass(frozen=True)
class KmsKeyProvider:
    """Data keys from AWS KMS under the backup's encryption context.

    The strict provider encrypts under an alias but decrypts only with key ARNs, so the
    alias is resolved once with DescribeKey and the ARN is what the manifest records.
    """

    key_id: str

    @classmethod
    def resolve(cls, key_id: str) -> KmsKeyProvider:
        import botocore.exceptions  # botocore loads with the first KMS call: see above
        import botocore.session

        session = botocore.session.Session()
        try:
            client = session.create_client("kms")
            metadata = client.describe_key(KeyId=key_id)["KeyMetadata"]
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise KeyUnavailable(
                f"KMS key {key_id} cannot be used ({code}); check BACKUP_KMS_KEY_ID and that "
                "this role may call kms:DescribeKey, kms:GenerateDataKey and kms:Decrypt on it"
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise KeyUnavailable(f"KMS is unreachable for key {key_id} ({exc})") from None
        if not metadata.get("Enabled", False):
            raise KeyUnavailable(
                f"KMS key {key_id} is {metadata.get('KeyState', 'disabled')}; enable it in KMS"
            )
        return cls(metadata["Arn"])

    def master_key_provider(self) -> MasterKeyProvider:
        from pgvault_assets.engine.vault.crypto import kms_master_key_provider  # the SDK: see above

        return kms_master_key_provider(self.key_id)


def key_provider_for_manifest(key_id: str, local: LocalKeyProvider | None) -> KeyProvider:
    """The provider that can decrypt a backup whose manifest names `key_id`."""
    if key_id.startswith("local:"):
        if local is None:
            raise ConfigError(
                "this backup was encrypted with a local key file; set BACKUP_LOCAL_KEY_FILE"
            )
        if local.key_id != key_id:
            raise KeyUnavailable(
                f"this backup was encrypted with local key {key_id[6:]}, but "
                f"{local.path} holds key {local.fingerprint()}; point BACKUP_LOCAL_KEY_FILE at the right key"
            )
        return local
    if not re.fullmatch(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+", key_id):
        # What a backup records is a key ARN (an alias is resolved first); anything else is a
        # damaged or forged manifest, and KMS would only fail on it less clearly.
        raise IntegrityError(
            f"the manifest names key {key_id!r}, neither a local key nor a KMS key ARN; "
            "the manifest is damaged, do not restore this backup"
        )
    return KmsKeyProvider(key_id)
