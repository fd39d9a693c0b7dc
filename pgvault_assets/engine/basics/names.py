"""Every object key and lock name in one place, so no module reaches into another for a name.

Databases a restore creates beside its target are named here too.

Layout of one environment's folder in the store::

    {environment}/{YYYY-MM-DD}/db_backup.sql.gz.enc     the encrypted dump
    {environment}/{YYYY-MM-DD}/server_context.sql.gz.enc  roles, database properties, extensions
    {environment}/{YYYY-MM-DD}/manifest.json            written last: the backup exists
    {environment}/{YYYY-MM-DD}/restore_verified.json    the last restore proof
    {environment}/{YYYY-MM-DD}/restore_failed.json      the last failed restore proof
    {environment}/pitr/cipher-passphrase.enc            pgBackRest's repository passphrase, sealed
    {environment}/reports/{YYYY-MM-DD}-fleet-health.md  a fleet's weekly health report

pgBackRest's own repository, in S3, sits beside the environments under `pgbackrest/`, so the
environment's listing never walks every archived WAL segment. Each server archives to a
stanza of its own (`pitr_stanza`); the passphrase is the environment's, one for all of them.

A database of a fleet file has the same layout under `{environment}/{database}` (its
namespace), and its locks are named after the namespace too: no key or lock is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pgvault_assets.settings import Settings

OBJECT_NAME = "db_backup.sql.gz.enc"
SERVER_CONTEXT_NAME = "server_context.sql.gz.enc"
MANIFEST_NAME = "manifest.json"
RESTORE_VERIFIED_NAME = "restore_verified.json"
# Its own name, never the proof's: a failure record must not make a backup count as verified.
RESTORE_FAILED_NAME = "restore_failed.json"
MAX_IDENTIFIER = 63  # PostgreSQL's limit on a name, in bytes
# Files that belong to one day's backup, beside its manifest.
BACKUP_FILES = (OBJECT_NAME, SERVER_CONTEXT_NAME, RESTORE_VERIFIED_NAME, RESTORE_FAILED_NAME)


def namespace(environment: str, database: str | None) -> str:
    """Where one database's objects live: the environment itself for the single database of
    `DATABASE_URL` (the manual's layout), `{environment}/{database}` for a fleet database."""
    return environment if database is None else f"{environment}/{database}"


def database_option(database: str | None) -> str:
    """The `--database NAME ` a command about one database passes: none for the single
    database of `DATABASE_URL`, as `namespace` names its folder."""
    return "" if database is None else f"--database {database} "


def split_namespace(namespace: str) -> tuple[str, str | None]:
    """The environment and the fleet database (None for the single database) of a namespace."""
    environment, _, database = namespace.partition("/")
    return environment, database or None


def _lock_stem(namespace: str) -> str:
    # Lock names are file names in the local store: '.' never occurs in an environment or a
    # database name, so `{environment}.{database}` is as unique as the namespace.
    return namespace.replace("/", ".")


def day_folder(environment: str, day: date) -> str:
    return f"{environment}/{day.isoformat()}"


def object_key(environment: str, day: date) -> str:
    return f"{day_folder(environment, day)}/{OBJECT_NAME}"


def server_context_key(environment: str, day: date) -> str:
    return f"{day_folder(environment, day)}/{SERVER_CONTEXT_NAME}"


def manifest_key(environment: str, day: date) -> str:
    return f"{day_folder(environment, day)}/{MANIFEST_NAME}"


def restore_verified_key(environment: str, day: date) -> str:
    return f"{day_folder(environment, day)}/{RESTORE_VERIFIED_NAME}"


def restore_failed_key(environment: str, day: date) -> str:
    return f"{day_folder(environment, day)}/{RESTORE_FAILED_NAME}"


def database_beside(target: str, label: str, stamp: str) -> str:
    """A database next to `target` (`<target>_<label>_<stamp>`: a restore being built, one
    kept for rollback), its target's name cut so the whole fits PostgreSQL's identifiers."""
    suffix = f"_{label}_{stamp}"
    return target.encode()[: MAX_IDENTIFIER - len(suffix)].decode(errors="ignore") + suffix


def restore_claim(target: str) -> str:
    """The advisory lock that claims `target` on its server: one restore, rollback or
    cleanup of the databases kept beside it at a time."""
    return f"pgvault-restore:{target}"


def retention_lock_name(environment: str) -> str:
    """The lock retention cleanup holds while deleting; a backup commits only outside it."""
    return f"{_lock_stem(environment)}-retention"


def backup_lock_name(environment: str, day: date) -> str:
    """The lock a backup of `day` holds from its start to its manifest."""
    return f"{_lock_stem(environment)}-backup-{day.isoformat()}"


def fleet_report_key(environment: str, day: date) -> str:
    """The weekly health report of every database of a fleet, beside the environment's own
    folders (a database can't be named `reports`)."""
    return f"{environment}/reports/{day.isoformat()}-fleet-health.md"


def pitr_passphrase_key(environment: str) -> str:
    """The sealed passphrase of the environment's pgBackRest repository."""
    return f"{environment}/pitr/cipher-passphrase.enc"


@dataclass(frozen=True)
class PitrStanza:
    """Where one server's pgBackRest lives: its stanza, its folder (configuration, locks,
    logs, and the repository in the embedded default) and its repository path in S3."""

    name: str
    directory: Path
    s3_path: str

    @property
    def config_file(self) -> Path:
        return self.directory / "pgbackrest.conf"

    @property
    def repo_dir(self) -> Path:
        return self.directory / "repo"


def pitr_stanza(settings: Settings) -> PitrStanza:
    """The stanza of the server `settings` are pinned to, named here and nowhere else.

    The fleet of one (`settings.server` None) keeps the names its archive was set up under:
    PITR_DIR itself, stanza ENVIRONMENT_NAME, `/pgbackrest/{environment}`. A fleet file's
    server S has `PITR_DIR/servers/S`, stanza `{environment}-S` and
    `/pgbackrest/{environment}/servers/S`: `servers` is no folder pgBackRest or the fleet of
    one writes, so no server's folder meets theirs."""
    environment, server, pitr_dir = settings.environment, settings.server, settings.pitr.directory
    repository = f"/pgbackrest/{environment}"
    if server is None:
        return PitrStanza(environment, pitr_dir, repository)
    return PitrStanza(
        f"{environment}-{server}", pitr_dir / "servers" / server, f"{repository}/servers/{server}"
    )
