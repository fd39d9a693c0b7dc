"""The manifest: the record that makes a stored object a backup.

A backup exists if and only if its manifest exists, and the manifest is written last, so an
interrupted run never shows as a backup. Parsing validates every field, because a manifest is
read back from storage that an attacker or a fault may have changed.

Fields added after version 1 are optional (`server_major`, `server_context`,
`rows_exclude_children`): a manifest written before them parses as it always did, and its
backup restores as it always did.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime

from pgvault_assets.engine.clock import aware
from pgvault_assets.engine.names import (
    OBJECT_NAME,
    SERVER_CONTEXT_NAME,
    manifest_key,
    split_namespace,
)
from pgvault_assets.errors import IntegrityError

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

    def to_json(self) -> bytes:
        data = asdict(self)
        data["date"] = self.date.isoformat()
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat()
        return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False).encode()

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


def _server_context(data: dict) -> ServerContextRecord | None:
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


def _str(data: dict, name: str) -> str:
    value = data[name]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return value


def _int(data: dict, name: str) -> int:
    return _nonneg(data[name], name)


def _nonneg(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value


def _dict(data: dict, name: str) -> dict:
    value = data[name]
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object")
    return value
