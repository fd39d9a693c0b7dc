"""The repository's cipher passphrase: generated once, kept sealed in the backup store.

One passphrase serves every stanza of the environment (each server of a fleet has its own),
whichever database's vault reads it: it is the environment's, not a database's.

The passphrase is an envelope's data key in all but name: it is sealed under the environment's
key (KMS in AWS, the local key file in the embedded default) with `purpose=backup`, so the
same key policy that guards the dumps guards the WAL, and a lost database host loses nothing
the sealed copy in the store cannot give back. In plaintext it exists only in memory and in
pgBackRest's 0600 configuration file.
"""

from __future__ import annotations

import secrets

from aws_encryption_sdk.exceptions import AWSEncryptionSDKClientError

from pgvault_assets.engine.basics import names
from pgvault_assets.engine.vault.crypto import ALGORITHM, SDK
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import IntegrityError, KeyUnavailable


def passphrase_context(environment: str) -> dict[str, str]:
    return {"purpose": "backup", "environment": environment, "object": "pitr-cipher-passphrase"}


def _environment(vault: Vault) -> str:
    """The environment of a vault's namespace (a fleet database's vault is one level below)."""
    return names.split_namespace(vault.environment)[0]


def _seal(vault: Vault, passphrase: str) -> bytes:
    keys = vault.encryption_keys()
    try:
        sealed, _ = SDK.encrypt(
            source=passphrase.encode(),
            key_provider=keys.master_key_provider(),
            encryption_context=passphrase_context(_environment(vault)),
            algorithm=ALGORITHM,
        )
    except AWSEncryptionSDKClientError as exc:
        raise KeyUnavailable(
            f"{keys.key_id} cannot seal the point-in-time repository's passphrase ({type(exc).__name__}); "
            "check that the key encrypts with purpose=backup (pgvault doctor)"
        ) from None
    return bytes(sealed)


def _open(vault: Vault, sealed: bytes) -> str:
    keys = vault.encryption_keys()
    try:
        opened, header = SDK.decrypt(source=sealed, key_provider=keys.master_key_provider())
    except AWSEncryptionSDKClientError as exc:
        raise KeyUnavailable(
            f"the point-in-time repository's passphrase cannot be opened with {keys.key_id} "
            f"({type(exc).__name__}); point pgvault at the key it was sealed with"
        ) from None
    expected = passphrase_context(_environment(vault))
    if any(dict(header.encryption_context).get(k) != v for k, v in expected.items()):
        raise IntegrityError(
            f"{names.pitr_passphrase_key(_environment(vault))} was sealed for another "
            "environment or purpose; do not use it"
        )
    return bytes(opened).decode()


def ensure_passphrase(vault: Vault) -> str:
    """The repository's passphrase: the sealed one in the store, else a new one sealed there
    first (create-only, so two concurrent `pitr init`s agree on one)."""
    key = names.pitr_passphrase_key(_environment(vault))
    sealed = vault.store.get_bytes(key)
    if sealed is None:
        vault.store.put_new(key, _seal(vault, secrets.token_urlsafe(48)))
        sealed = vault.store.get_bytes(key)
        if sealed is None:
            raise KeyUnavailable(f"{key} vanished right after it was written; run this again")
    return _open(vault, sealed)


def stored_passphrase(vault: Vault) -> str:
    """The existing passphrase; refuse when point-in-time recovery was never set up."""
    sealed = vault.store.get_bytes(names.pitr_passphrase_key(_environment(vault)))
    if sealed is None:
        raise KeyUnavailable(
            f"{_environment(vault)} has no point-in-time repository passphrase; "
            "run pgvault pitr init"
        )
    return _open(vault, sealed)
