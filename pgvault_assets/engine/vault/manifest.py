"""The manifest: the record that makes a stored object a backup.

A backup exists if and only if its manifest exists, and the manifest is written last, so an
interrupted run never shows as a backup. Parsing validates every field, because a manifest is
read back from storage that an attacker or a fault may have changed.

Fields added after version 1 are optional (`server_major`, `server_context`,
`rows_exclude_children`, `source`, `new_source`, `replaced`): a manifest written before them
parses as it always did, and its backup restores as it always did. One without `source` is of
an unknown source: nothing is refused on its account.

A re-run of a date records the backups it replaced (`replaced`, oldest first, each a manifest
of its own pinning its object's version), so they stay listable and restorable until
retention deletes the date.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
from typing import Any

from pgvault_assets.engine.basics.clock import aware
from pgvault_assets.engine.basics.names import (
    OBJECT_NAME,
    SERVER_CONTEXT_NAME,
    manifest_key,
    split_namespace,
)
from pgvault_assets.errors import BackupNotFound, IntegrityError

FORMAT_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# What a server context holds of the roles' password hashes, and why.
PASSWORDS_INCLUDED = "included"
PASSWORDS_UNREADABLE = "unreadable"  # the backup role may not read pg_authid (managed servers)
PASSWORDS_EXCLUDED = "excluded"  # BACKUP_ROLE_PASSWORDS=exclude
PASSWORD_MODES = (PASSWORDS_INCLUDED, PASSWORDS_UNREADABLE, PASSWORDS_EXCLUDED)


def _context(purpose: str, namespace: str, day: date) -> dict[str, str]:
    environment, database = split_namespace(namespace)
    context = {"purpose": purpose, "environment": environment, "date": day.isoformat()}
    if database is not None:
        context["database"] = database
    return context


def encryption_context(environment: str, day: date) -> dict[str, str]:
    """Bound into every encrypted backup: a backup of one day, environment or fleet database
    (`environment` is a namespace, names.py) can't pose as another."""
    return _context("backup", environment, day)


def server_context_encryption_context(environment: str, day: date) -> dict[str, str]:
    """The dump's context with its own purpose: neither object can pose as the other."""
    return _context("server_context", environment, day)


@dataclass(frozen=True)
class ServerContextRecord:
    """The stored server context (roles, database properties, extensions) beside the dump."""

    object_key: str
    sha256: str
    size_bytes: int
    passwords: str
    object_version_id: str | None = None


@dataclass(frozen=True)
class SourceIdentity:
    """Which database a backup was taken of: the cluster (`system_identifier`, None where
    the backup role may not read it), the database's name and its oid."""

    system_identifier: str | None
    database: str
    database_oid: int

    def describe(self) -> str:
        server = self.system_identifier or "unknown"
        return f"database {self.database} (oid {self.database_oid}) on system {server}"

    def other_database_than(self, other: SourceIdentity) -> bool:
        """Another database, not the same one recreated: another name, or another cluster.
        An oid alone changes when the database is restored by a swap (or recreated)."""
        clusters_differ = None not in (self.system_identifier, other.system_identifier) and (
            self.system_identifier != other.system_identifier
        )
        return self.database != other.database or clusters_differ


@dataclass(frozen=True)
class Manifest:
    environment: str
    date: date
    object_key: str
    sha256: str
    size_bytes: int
    dump_size_bytes: int
    compressed_size_bytes: int
    started_at: datetime
    finished_at: datetime
    stage_seconds: dict[str, float]
    server_version: str
    pg_dump_version: str
    database: str
    table_rows: dict[str, int]
    key_id: str
    pgvault_version: str
    object_version_id: str | None = None
    compression_level: int = 2
    format_version: int = FORMAT_VERSION
    encryption_context: dict[str, str] = field(default_factory=dict)
    server_major: int | None = None
    server_context: ServerContextRecord | None = None
    # Counts taken from the dump's COPY blocks hold each table's own rows; older backups
    # counted a parent table's inheritance children with it.
    rows_exclude_children: bool = False
    source: SourceIdentity | None = None
    # The operator accepted this source though the previous backups came from another.
    new_source: bool = False
    replaced: tuple[Manifest, ...] = ()

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def row_total(self) -> int:
        return sum(self.table_rows.values())

    @property
    def compression_ratio(self) -> float:
        """Dump bytes per stored byte (e.g. 3.4 means 70% smaller)."""
        return (
            self.dump_size_bytes / self.compressed_size_bytes if self.compressed_size_bytes else 0.0
        )

    @property
    def versions(self) -> tuple[Manifest, ...]:
        """Every backup of this date still stored: the ones replaced, oldest first, then this."""
        return (*self.replaced, self)

    def version(self, version_id: str) -> Manifest:
        """The backup of this date whose object is `version_id` (this one or one it replaced)."""
        for candidate in self.versions:
            if candidate.object_version_id == version_id:
                return candidate
        known = ", ".join(m.object_version_id or "-" for m in self.versions)
        raise BackupNotFound(
            f"the backup of {self.date.isoformat()} has no version {version_id!r} (stored: "
            f"{known}); run pgvault list-backups --versions to see them"
        )

    def replacing(self, previous: Manifest) -> Manifest:
        """This manifest, recording that it replaces `previous` and what that replaced."""
        return replace(self, replaced=(*previous.replaced, replace(previous, replaced=())))

    def to_json(self) -> bytes:
        return json.dumps(
            asdict(self), indent=2, sort_keys=True, ensure_ascii=False, default=_iso
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes, expected_key: str | None = None) -> Manifest:
        """Parse and validate; raise `IntegrityError` naming what is wrong."""
        where = expected_key or "manifest"
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise IntegrityError(f"{where} is not valid JSON; do not restore this backup") from None
        if not isinstance(data, dict):
            raise IntegrityError(f"{where} is not a JSON object; do not restore this backup")
        try:
            manifest = cls(
                environment=_str(data, "environment"),
                date=date.fromisoformat(_str(data, "date")),
                object_key=_str(data, "object_key"),
                sha256=_str(data, "sha256"),
                size_bytes=_int(data, "size_bytes"),
                dump_size_bytes=_int(data, "dump_size_bytes"),
                compressed_size_bytes=_int(data, "compressed_size_bytes"),
                started_at=aware(_str(data, "started_at"), "started_at"),
                finished_at=aware(_str(data, "finished_at"), "finished_at"),
                stage_seconds={str(k): float(v) for k, v in _dict(data, "stage_seconds").items()},
                server_version=_str(data, "server_version"),
                pg_dump_version=_str(data, "pg_dump_version"),
                database=_str(data, "database"),
                table_rows={str(k): _nonneg(v, k) for k, v in _dict(data, "table_rows").items()},
                key_id=_str(data, "key_id"),
                pgvault_version=_str(data, "pgvault_version"),
                object_version_id=_str(data, "object_version_id")
                if data.get("object_version_id") is not None
                else None,
                compression_level=_int(data, "compression_level"),
                format_version=_int(data, "format_version"),
                encryption_context={
                    str(k): str(v) for k, v in _dict(data, "encryption_context").items()
                },
                server_major=_int(data, "server_major")
                if data.get("server_major") is not None
                else None,
                server_context=_server_context(data),
                rows_exclude_children=data.get("rows_exclude_children") is True,
                source=_source(data),
                new_source=data.get("new_source") is True,
                replaced=_replaced(data, expected_key),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(
                f"{where} is malformed ({exc}); do not restore this backup"
            ) from None
        if manifest.format_version > FORMAT_VERSION:
            raise IntegrityError(
                f"{where} was written by a newer pgvault (format version "
                f"{manifest.format_version}; this one reads {FORMAT_VERSION}); upgrade pgvault"
            )
        if manifest.format_version != FORMAT_VERSION:
            raise IntegrityError(
                f"{where} has format version {manifest.format_version}; "
                f"this pgvault reads version {FORMAT_VERSION}"
            )
        if not _SHA256.match(manifest.sha256):
            raise IntegrityError(f"{where} has an invalid sha256; do not restore this backup")
        if expected_key is not None and manifest_key(manifest.environment, manifest.date) != (
            expected_key
        ):
            raise IntegrityError(
                f"{where} describes the backup of {manifest.environment} on {manifest.date}, "
                "not the one stored there; do not restore this backup"
            )
        if expected_key is not None:
            expected_object = expected_key.rsplit("/", 1)[0] + "/" + OBJECT_NAME
            if manifest.object_key != expected_object:
                raise IntegrityError(
                    f"{where} points at {manifest.object_key!r}, not {expected_object!r}; "
                    "do not restore this backup"
                )
        if any(
            (old.environment, old.date) != (manifest.environment, manifest.date)
            for old in manifest.replaced
        ):
            raise IntegrityError(
                f"{where} records a replaced backup of another date; do not restore this backup"
            )
        if manifest.encryption_context != encryption_context(manifest.environment, manifest.date):
            raise IntegrityError(f"{where} has an unexpected encryption context")
        context = manifest.server_context
        if context is not None:
            expected_context = manifest.object_key.rsplit("/", 1)[0] + "/" + SERVER_CONTEXT_NAME
            if context.object_key != expected_context:
                raise IntegrityError(
                    f"{where} points at {context.object_key!r} for the server context, not "
                    f"{expected_context!r}; do not restore this backup"
                )
            if not _SHA256.match(context.sha256) or context.passwords not in PASSWORD_MODES:
                raise IntegrityError(
                    f"{where} has an invalid server context record; do not restore this backup"
                )
        return manifest


def _iso(value: object) -> str:
    if isinstance(value, date):  # a datetime is a date too
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _source(data: dict[str, Any]) -> SourceIdentity | None:
    if data.get("source") is None:
        return None
    record = _dict(data, "source")
    return SourceIdentity(
        system_identifier=_str(record, "system_identifier")
        if record.get("system_identifier") is not None
        else None,
        database=_str(record, "database"),
        database_oid=_int(record, "database_oid"),
    )


def _replaced(data: dict[str, Any], expected_key: str | None) -> tuple[Manifest, ...]:
    """The backups this one replaced, each validated as a manifest of the same key."""
    entries = data.get("replaced") or []
    if not isinstance(entries, list):
        raise ValueError("replaced must be a list")
    found = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("replaced"):
            raise ValueError("replaced must hold manifests that replaced nothing themselves")
        found.append(Manifest.from_json(json.dumps(entry).encode(), expected_key))
    return tuple(found)


def _server_context(data: dict[str, Any]) -> ServerContextRecord | None:
    if data.get("server_context") is None:
        return None
    record = _dict(data, "server_context")
    return ServerContextRecord(
        object_key=_str(record, "object_key"),
        sha256=_str(record, "sha256"),
        size_bytes=_int(record, "size_bytes"),
        passwords=_str(record, "passwords"),
        object_version_id=_str(record, "object_version_id")
        if record.get("object_version_id") is not None
        else None,
    )


def _str(data: dict[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def _int(data: dict[str, Any], name: str) -> int:
    return _nonneg(data[name], name)


def _nonneg(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


def _dict(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data[name]
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object")
    return value
