"""The AWS Encryption SDK message format that backups are written in.

Backups are encrypted as standard AWS Encryption SDK messages (framed AES-256-GCM, HKDF with
key commitment), so they can be decrypted with the SDK or `aws-encryption-cli` even without
pgvault. The data key comes from KMS under the backup's encryption context, or, in the
embedded default, is wrapped with a local 256-bit key file (keys.py holds both keys).
"""

from __future__ import annotations

import aws_encryption_sdk
import botocore.session
from aws_encryption_sdk.identifiers import (
    Algorithm,
    CommitmentPolicy,
    EncryptionKeyType,
    WrappingAlgorithm,
)
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.base import MasterKeyProvider
from aws_encryption_sdk.key_providers.kms import StrictAwsKmsMasterKeyProvider
from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider

# Key commitment without the ECDSA signature: every reader of a backup also holds the key, so
# a signature would add cost to every byte and protect against no one extra; the manifest's
# SHA-256 covers tampering in storage.
ALGORITHM = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY
FRAME_LENGTH = 256 * 1024
LOCAL_PROVIDER_ID = "pgvault-local"
LOCAL_KEY_NAME = b"backup-key"

SDK = aws_encryption_sdk.EncryptionSDKClient(
    commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
)


class _LocalMasterKeyProvider(RawMasterKeyProvider):  # type: ignore[misc]  # the SDK ships no types
    provider_id = LOCAL_PROVIDER_ID

    wrapping_key: WrappingKey

    def _get_raw_key(self, key_id: bytes) -> WrappingKey:
        return self.wrapping_key


def local_master_key_provider(key: bytes) -> MasterKeyProvider:
    """The SDK's provider for a local 256-bit key (keys.LocalKeyProvider's file)."""
    provider = _LocalMasterKeyProvider()
    provider.wrapping_key = WrappingKey(
        wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
        wrapping_key=key,
        wrapping_key_type=EncryptionKeyType.SYMMETRIC,
    )
    provider.add_master_key(LOCAL_KEY_NAME)
    return provider


def kms_master_key_provider(key_arn: str) -> MasterKeyProvider:
    """The SDK's strict provider for one KMS key ARN (keys.KmsKeyProvider's)."""
    return StrictAwsKmsMasterKeyProvider(
        key_ids=[key_arn], botocore_session=botocore.session.Session()
    )
