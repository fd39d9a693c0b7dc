"""The store and keys of one environment: what every engine operation works on."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date

from pgvault_assets.engine.basics import names
from pgvault_assets.engine.storage.store import Store, open_store
from pgvault_assets.engine.vault.keys import (
    KeyProvider,
    KmsKeyProvider,
    LocalKeyProvider,
    key_provider_for_manifest,
)
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.errors import BackupNotFound, IntegrityError, KeyUnavailable, PgvaultError
from pgvault_assets.settings import RestoreLoad, RetentionPolicy, Settings

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnreadableRecord:
    """A manifest that exists but cannot be read; its backup is neither used nor deleted."""

    day: date
    key: str
    reason: str


@dataclass
class Vault:
    environment: str
    """The namespace (names.py): the environment, or `{environment}/{database}` in a fleet."""
    store: Store
    local_key: LocalKeyProvider | None
    kms_key_id: str | None = None
    _kms: KmsKeyProvider | None = None
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    restore_load: RestoreLoad = field(default_factory=RestoreLoad)

    @classmethod
    def from_settings(cls, settings: Settings) -> Vault:
        store = open_store(settings)
        namespace = names.namespace(settings.environment, settings.database)
        if settings.uses_s3:
            return cls(
                namespace,
                store,
                None,
                settings.kms_key_id,
                retention=settings.retention,
                restore_load=settings.restore_load,
            )
        return cls(
            namespace,
            store,
            LocalKeyProvider(settings.local_key_file),
            retention=settings.retention,
            restore_load=settings.restore_load,
        )

    def encryption_keys(self) -> KeyProvider:
        """The provider new backups are encrypted with (resolving a KMS alias to its ARN once)."""
        if self.kms_key_id is not None:
            if self._kms is None:
                self._kms = KmsKeyProvider.resolve(self.kms_key_id)
            return self._kms
        if self.local_key is None:
            raise KeyUnavailable(
                f"{self.environment} has neither a KMS key nor a local key file to encrypt with; "
                "set BACKUP_KMS_KEY_ID or BACKUP_LOCAL_KEY_FILE"
            )
        if not self.local_key.path.exists() and (backed_up := self.backup_dates()):
            raise KeyUnavailable(
                f"there is no key file at {self.local_key.path}, yet {self.store.location} "
                f"holds {len(backed_up)} backups of {self.environment} made with one: put that "
                "key back there (check a copy first with: pgvault key-fingerprint --file COPY) "
                "or point BACKUP_LOCAL_KEY_FILE at it; a new key could not read them"
            )
        self.local_key.ensure()
        return self.local_key

    def decryption_keys(self, manifest: Manifest) -> KeyProvider:
        return key_provider_for_manifest(manifest.key_id, self.local_key)

    def object_key(self, day: date) -> str:
        return names.object_key(self.environment, day)

    def manifest_key(self, day: date) -> str:
        return names.manifest_key(self.environment, day)

    def read_manifest(self, day: date, version: str | None = None) -> Manifest:
        """The backup of `day`; with `version`, the one of its stored versions whose object
        is that version (`list-backups --versions`), current or replaced."""
        key = self.manifest_key(day)
        raw = self.store.get_bytes(key)
        if raw is None:
            raise BackupNotFound(
                f"no backup for {day.isoformat()} in {self.store.location}/{self.environment}; "
                "run pgvault list-backups to see the dates there are"
            )
        manifest = Manifest.from_json(raw, expected_key=key)
        return manifest if version is None else manifest.version(version)

    def backup_dates(self) -> list[date]:
        """The dates that have a manifest, oldest first, from the listing alone."""
        days = []
        for obj in self.store.list(f"{self.environment}/"):
            if obj.key.endswith("/" + names.MANIFEST_NAME):
                day_text = obj.key[len(self.environment) + 1 :].split("/")[0]
                try:
                    days.append(date.fromisoformat(day_text))
                except ValueError:
                    continue
        return sorted(days)

    def size_before(self, day: date, backed_up: list[date]) -> int | None:
        """The stored size of the newest backup before `day`, a guide to the next one's; None
        when there is none or its manifest cannot be read (a guide must not stop a backup)."""
        earlier = [d for d in backed_up if d < day]
        if not earlier:
            return None
        try:
            return self.read_manifest(earlier[-1]).size_bytes
        except PgvaultError:
            return None

    def scan_manifests(self) -> tuple[list[Manifest], list[UnreadableRecord]]:
        """Every backup whose manifest reads, oldest first, and every one whose does not."""
        readable, unreadable = [], []
        for day in self.backup_dates():
            try:
                readable.append(self.read_manifest(day))
            except IntegrityError as exc:
                unreadable.append(UnreadableRecord(day, self.manifest_key(day), str(exc)))
        return readable, unreadable

    def list_manifests(self) -> list[Manifest]:
        """Every backup whose manifest reads, oldest first. One that does not (damaged, or
        written by a newer pgvault) is said in a warning and skipped: it must not blind
        listing, cleanup and alerting to all the others."""
        readable, unreadable = self.scan_manifests()
        for record in unreadable:
            _log.warning("skipped the backup of %s: %s", record.day.isoformat(), record.reason)
        return readable
