"""`pgvault doctor`: is this deployment able to back up and restore, end to end, right now?

Each check runs what a backup or a restore would (connect, match tool versions, encrypt and
decrypt under the backup's context, write, read and delete in the store) and says in one line
what is right or what to do. A check never prints a secret: URLs are shown redacted, the
Sentry DSN without its key.
"""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from pathlib import Path

import botocore.exceptions
from aws_encryption_sdk.exceptions import AWSEncryptionSDKClientError
from sentry_sdk.utils import BadDsn, Dsn

from pgvault_assets.engine.basics import names
from pgvault_assets.engine.pitr.archive import pitr_status
from pgvault_assets.engine.postgres.postgres import check_tool_fits_server, connect, server_version
from pgvault_assets.engine.storage.bucket import BucketSettings
from pgvault_assets.engine.storage.store import Store
from pgvault_assets.engine.vault import manifest as mf
from pgvault_assets.engine.vault.crypto import ALGORITHM, SDK
from pgvault_assets.engine.vault.keys import LocalKeyProvider, key_provider_for_manifest
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import PgvaultError
from pgvault_assets.redact import redact
from pgvault_assets.settings import DatabaseUrl, Settings

DOCTOR_FOLDER = ".doctor"
_PROBE = b"pgvault doctor: can this key encrypt and decrypt a backup?"


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skipped"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


def failed(checks: list[Check]) -> list[Check]:
    return [check for check in checks if check.status is Status.FAIL]


def _guarded(name: str, run: Callable[[], Check]) -> Check:
    """An operator error becomes a failed check with its one line, never a crash of the doctor."""
    try:
        return run()
    except PgvaultError as exc:
        return Check(name, Status.FAIL, redact(str(exc)))
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        return Check(name, Status.FAIL, redact(f"AWS refused: {exc}"))


def database_checks(settings: Settings) -> list[Check]:
    """The configured databases reachable, and pg_dump and psql new enough for their servers."""
    checks = []
    majors: dict[str, int] = {}
    targets: list[tuple[str, DatabaseUrl | None]] = [
        ("DATABASE_URL", settings.database_url),
        ("STAGING_DATABASE_URL", settings.staging_database_url),
        ("RESTORE_CHECK_DATABASE_URL", settings.restore_check_database_url),
    ]
    # A fleet database's URLs come from its server's variables: named by the database instead.
    fleet_labels = {
        "DATABASE_URL": f"{settings.database}",
        "STAGING_DATABASE_URL": f"{settings.database}, staging",
    }
    for variable, url in targets:
        label = fleet_labels.get(variable, variable) if settings.database else variable
        name = f"database ({label})"
        if url is None:
            if variable == "DATABASE_URL":
                checks.append(
                    Check(name, Status.FAIL, "not set; set it to the database to back up")
                )
            continue
        try:
            with connect(url) as conn:
                major, version = server_version(conn)
        except PgvaultError as exc:
            checks.append(Check(name, Status.FAIL, redact(str(exc))))
            continue
        majors[variable] = major
        checks.append(Check(name, Status.OK, f"{version} at {url}"))

    tools = [("pg_dump", majors.get("DATABASE_URL")), ("psql", max(majors.values(), default=None))]
    for tool, server_major in tools:
        if server_major is None:
            checks.append(Check(tool, Status.SKIP, "no reachable server to compare with"))
            continue
        try:
            _, version = check_tool_fits_server(tool, server_major)
        except PgvaultError as exc:
            checks.append(Check(tool, Status.FAIL, str(exc)))
            continue
        checks.append(Check(tool, Status.OK, f"{version} fits server {server_major}"))
    return checks


def key_check(vault: Vault, today: date) -> Check:
    """Encrypt and decrypt a small message under the backup context, as a backup and restore do."""
    name = "encryption key"
    local = vault.local_key
    if local is not None and not local.path.exists():
        if vault.backup_dates():
            return Check(
                name,
                Status.FAIL,
                f"{local.path} is missing but backups exist; restore it from your key backup",
            )
        return Check(name, Status.OK, f"none yet: the first backup creates {local.path} owner-only")

    def run() -> Check:
        keys = vault.encryption_keys()
        context = mf.encryption_context(vault.environment, today)
        try:
            sealed, _ = SDK.encrypt(
                source=_PROBE,
                key_provider=keys.master_key_provider(),
                encryption_context=context,
                algorithm=ALGORITHM,
            )
            reader = key_provider_for_manifest(keys.key_id, local)
            opened, header = SDK.decrypt(source=sealed, key_provider=reader.master_key_provider())
        except AWSEncryptionSDKClientError as exc:
            return Check(
                name,
                Status.FAIL,
                redact(f"{keys.key_id} cannot encrypt and decrypt with purpose=backup ({exc})"),
            )
        if opened != _PROBE or dict(header.encryption_context).get("purpose") != "backup":
            return Check(name, Status.FAIL, f"{keys.key_id} returned a different message")
        where = (
            f"local key file {keys.path} (fingerprint {keys.fingerprint()})"
            if isinstance(keys, LocalKeyProvider)
            else keys.key_id
        )
        return Check(name, Status.OK, f"{where} encrypts and decrypts with purpose=backup")

    return _guarded(name, run)


def bucket_checks(store: Store, lock_mode: str) -> list[Check]:
    """The manual's bucket settings; a missing bucket is one failure, not five. `lock_mode`:
    the Object Lock mode backups are written in (BACKUP_OBJECT_LOCK_MODE)."""
    try:
        found = store.inspect_bucket()
    except PgvaultError as exc:
        return [Check("bucket", Status.FAIL, str(exc))]
    if found is None:
        return [Check("bucket", Status.SKIP, f"{store.location} is not a bucket")]
    if not found.exists:
        return [
            Check(
                "bucket",
                Status.FAIL,
                f"{store.location} does not exist; run pgvault init-storage",
            )
        ]
    checks = [Check("bucket", Status.OK, store.location)]
    checks.extend(_bucket_setting_checks(found, lock_mode))
    if found.unreadable:
        checks.append(
            Check(
                "bucket permissions",
                Status.WARN,
                f"cannot read {', '.join(found.unreadable)}; grant them to check these settings",
            )
        )
    return checks


def _bucket_setting_checks(found: BucketSettings, lock_mode: str) -> list[Check]:
    """One row per readable setting; what cannot be read is reported once, by the caller."""
    checks = []
    if found.versioning is not None:
        checks.append(
            Check("bucket versioning", Status.OK, "enabled")
            if found.versioned
            else Check(
                "bucket versioning",
                Status.FAIL,
                f"{found.versioning.lower()}: an overwritten or deleted backup cannot be "
                "brought back; run pgvault init-storage",
            )
        )
    if found.public_access_blocked is not None:
        checks.append(
            Check("bucket public access", Status.OK, "blocked (all four settings)")
            if found.public_access_blocked
            else Check(
                "bucket public access", Status.FAIL, "not fully blocked; run pgvault init-storage"
            )
        )
    if found.default_encryption is not None:
        algorithm, key = found.default_encryption
        checks.append(
            Check("bucket default encryption", Status.OK, f"SSE-KMS ({key})")
            if algorithm == "aws:kms"
            else Check(
                "bucket default encryption",
                Status.WARN,
                f"{algorithm}: pgvault still writes SSE-KMS, but other writers would not; "
                "run pgvault init-storage",
            )
        )
    if found.object_lock is not None:
        checks.append(
            Check(
                "bucket object lock",
                Status.OK,
                f"on: backups locked in {lock_mode.lower()} mode for their tier"
                if found.object_lock
                else "off (optional): pgvault init-storage --object-lock makes backups immutable",
            )
        )
    return checks


def local_store_check(settings: Settings) -> Check:
    """The embedded default's folder must be the owner's alone (backups, key, audit trail)."""
    name = "local store"
    folder = settings.local_dir
    if not folder.exists():
        return Check(name, Status.OK, f"none yet: the first backup creates {folder} owner-only")
    loose = [path for path in (folder, settings.local_key_file) if _open_to_others(path)]
    if loose:
        paths = " ".join(str(path) for path in loose)
        return Check(name, Status.FAIL, f"readable by other users; run: chmod go-rwx {paths}")
    return Check(name, Status.OK, f"{folder} is owner-only")


def _open_to_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except FileNotFoundError:
        return False


def round_trip_check(vault: Vault) -> Check:
    """Write, read back and delete (every version of) a probe, as backups and retention do."""
    name = "store round trip"
    key = f"{vault.environment}/{DOCTOR_FOLDER}/{uuid.uuid4().hex}.txt"
    payload = os.urandom(64)

    def run() -> Check:
        store = vault.store
        store.put_bytes(key, payload)
        try:
            read = store.get_bytes(key)
        finally:
            store.delete(key)
        if read != payload:
            return Check(
                name, Status.FAIL, f"{key} read back different bytes from {store.location}"
            )
        if store.get_bytes(key) is not None or store.any_version_left(key):
            return Check(name, Status.FAIL, f"{key} could not be deleted from {store.location}")
        return Check(name, Status.OK, f"wrote, read and deleted {key} in {store.location}")

    return _guarded(name, run)


def sentry_check(dsn: str | None) -> Check:
    """Parse the DSN as the Sentry SDK would; show it with its key masked."""
    name = "sentry"
    if not dsn:
        return Check(name, Status.WARN, "SENTRY_DSN is not set: failures are not reported")
    try:
        parsed = Dsn(dsn)
    except BadDsn:
        return Check(
            name,
            Status.FAIL,
            "SENTRY_DSN is not a valid DSN; copy it from Sentry (https://KEY@HOST/PROJECT)",
        )
    return Check(
        name, Status.OK, f"{parsed.scheme}://***@{parsed.host}/{parsed.project_id} (key hidden)"
    )


def pitr_check(settings: Settings) -> Check:
    """WAL archiving, where `pgvault pitr init` set it up: the first problem pitr status has."""
    name = "WAL archiving"

    def run() -> Check:
        problems = pitr_status(settings).problems(settings.pitr.max_lag)
        if problems:
            more = (
                f" (and {len(problems) - 1} more: pgvault pitr status)" if len(problems) > 1 else ""
            )
            return Check(name, Status.FAIL, redact(problems[0][1]) + more)
        stanza = names.pitr_stanza(settings).name
        return Check(name, Status.OK, f"archiving to stanza {stanza}, no lag or gap")

    return _guarded(name, run)


def run_checks(settings: Settings, *, today: date) -> list[Check]:
    """Every engine-level check of the deployment, in the order a backup meets them."""
    vault = Vault.from_settings(settings)
    checks = database_checks(settings)
    checks.append(key_check(vault, today))
    if settings.uses_s3:
        checks.extend(bucket_checks(vault.store, settings.object_lock_mode))
    else:
        checks.append(local_store_check(settings))
    checks.append(round_trip_check(vault))
    checks.append(sentry_check(settings.sentry_dsn))
    if names.pitr_stanza(settings).config_file.exists():
        checks.append(pitr_check(settings))
    return checks
