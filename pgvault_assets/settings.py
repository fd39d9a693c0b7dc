"""Environment → one frozen `Settings`, with a section per concern.

Every variable is read and validated here, once per command, so a bad value fails at start
with one line naming the variable. Database URLs are kept as `DatabaseUrl`, whose `str()`
hides the password. Sections: storage and keys (the top level), `retention`, `recovery`
(approvals, drills) and `platform` (what shapes the Dagster definitions themselves).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pgvault_assets.errors import ConfigError

ENVIRONMENT_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# S3 Object Lock modes for backups in a bucket that has Object Lock: governance can be lifted
# by a principal granted s3:BypassGovernanceRetention, compliance by no one until it expires.
OBJECT_LOCK_MODES = ("governance", "compliance")


@dataclass(frozen=True)
class DatabaseUrl:
    """A postgresql:// URL whose password never leaves this object except to libpq.

    `str()` and `repr()` give the redacted form; `.secret` is the full URL and is only ever
    handed to psycopg or, via the PGPASSWORD environment variable, to pg_dump and psql.
    """

    secret: str = field(repr=False)

    @classmethod
    def parse(cls, value: str, variable: str) -> DatabaseUrl:
        try:
            parts = urlsplit(value.strip())
            port = parts.port
        except ValueError:
            raise ConfigError(
                f"{variable} is not a valid URL; expected postgresql://user@host:port/dbname"
            ) from None
        if parts.scheme not in ("postgresql", "postgres"):
            raise ConfigError(
                f"{variable} must start with postgresql:// (got scheme {parts.scheme!r})"
            )
        if not parts.hostname and "host=" not in parts.query:
            raise ConfigError(
                f"{variable} has no host; expected postgresql://user@host:port/dbname"
            )
        if not parts.path.strip("/"):
            raise ConfigError(
                f"{variable} names no database; expected postgresql://user@host:port/dbname"
            )
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"{variable} has an invalid port")
        return cls(value.strip())

    @property
    def dbname(self) -> str:
        return unquote(urlsplit(self.secret).path.lstrip("/"))

    @property
    def password(self) -> str | None:
        pw = urlsplit(self.secret).password
        return unquote(pw) if pw else None

    def with_dbname(self, dbname: str) -> DatabaseUrl:
        """The same server and credentials, another database (for maintenance and swaps)."""
        parts = urlsplit(self.secret)
        return DatabaseUrl(urlunsplit(parts._replace(path="/" + quote(dbname, safe=""))))

    @property
    def redacted(self) -> str:
        parts = urlsplit(self.secret)
        netloc = parts.hostname or ""
        if ":" in netloc:  # an IPv6 address keeps its brackets, or its port reads as part of it
            netloc = f"[{netloc}]"
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        if parts.username:
            netloc = f"{unquote(parts.username)}@{netloc}"
        return urlunsplit(("postgresql", netloc, parts.path, "", ""))

    def __str__(self) -> str:
        return self.redacted

    def __repr__(self) -> str:
        return f"DatabaseUrl({self.redacted!r})"


@dataclass(frozen=True)
class RetentionPolicy:
    daily_days: int = 30
    weekly_days: int = 90
    monthly_days: int = 365


DEFAULT_REQUEST_TTL = timedelta(hours=4)
RECOVERY_TIME_OBJECTIVE = timedelta(hours=4)
RESTORE_VERIFY_SCHEDULES = ("daily", "weekly")
ROLE_PASSWORD_CHOICES = ("include", "exclude")


@dataclass(frozen=True)
class RecoverySettings:
    """Who may approve a production operation, how long a request lives, the drill."""

    approvers_file: Path | None = None
    request_ttl: timedelta = DEFAULT_REQUEST_TTL
    drill_queries_file: Path | None = None
    recovery_time_objective: timedelta = RECOVERY_TIME_OBJECTIVE

    def require_approvers_file(self) -> Path:
        if self.approvers_file is None:
            raise ConfigError(
                "RESTORE_APPROVERS_FILE is not set; set it to an OpenSSH allowed-signers file listing the approvers"
            )
        if not self.approvers_file.is_file():
            raise ConfigError(
                f"RESTORE_APPROVERS_FILE {self.approvers_file} does not exist; point it at the allowed-signers file"
            )
        return self.approvers_file


@dataclass(frozen=True)
class PlatformSettings:
    """What shapes the Dagster definitions themselves (partitions, retries), read when the
    code location loads: they are part of each definition, not of a run, and none is secret."""

    start_date: date | None = None
    """`BACKUP_START_DATE`: the first day partition; unset, the environment's first backup
    (defs/backup.py), so a new installation's UI shows its own history, not a wall of gaps."""
    max_retries: int = 3
    retry_delay_seconds: float = 60.0
    fleet_file: Path | None = None
    """`PGVAULT_FLEET_FILE`: the databases to back up (engine/fleet.py); unset, `DATABASE_URL`
    alone, under the environment's own prefix, as a fleet of one."""


MIB = 1024 * 1024


def default_restore_loaders() -> int:
    """The cores this host may use (the server's, as far as it can tell), at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


@dataclass(frozen=True)
class RestoreLoad:
    """How a restore loads the dump: `RESTORE_PARALLEL_LOADERS` psql sessions, and at most
    `RESTORE_READ_AHEAD_MIB` of it read ahead of them (held in memory, spilled nowhere)."""

    loaders: int = field(default_factory=default_restore_loaders)
    read_ahead_bytes: int = 256 * MIB


PITR_URI_STYLES = ("host", "path")


@dataclass(frozen=True)
class PitrSettings:
    """Point-in-time recovery by pgBackRest: where its configuration, local repository, locks
    and logs live (a folder the `postgres` OS user can reach), how stale the WAL archive may
    grow, and how S3 is reached when the backups are in S3."""

    directory: Path
    max_lag_minutes: int = 15
    retention_days: int = 7
    archive_push_timeout_seconds: int = 60
    io_timeout_seconds: int = 10
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_uri_style: str = "host"
    s3_ca_file: Path | None = None
    s3_access_key: str | None = field(default=None, repr=False)
    s3_secret_key: str | None = field(default=None, repr=False)

    @property
    def config_file(self) -> Path:
        return self.directory / "pgbackrest.conf"

    @property
    def max_lag(self) -> timedelta:
        return timedelta(minutes=self.max_lag_minutes)


PAGERDUTY_ROUTING_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{8,128}$")


@dataclass(frozen=True)
class PagerDutySettings:
    """Paging the on-call engineer through PagerDuty's Events API v2: on when a routing key is
    set. Critical alerts trigger an incident, the end of their episode resolves it; warnings
    page only when asked to. `dagster_url` lets a page link to the run it is about."""

    routing_key: str | None = field(default=None, repr=False)
    events_url: str | None = None
    """Another Events API host (a proxy, or a test's receiver); unset, PagerDuty's own."""
    warnings: bool = False
    dagster_url: str | None = None


@dataclass(frozen=True)
class Settings:
    environment: str
    database_url: DatabaseUrl | None
    staging_database_url: DatabaseUrl | None
    s3_bucket: str | None
    kms_key_id: str | None
    local_dir: Path
    local_key_file: Path
    retention: RetentionPolicy
    compression_level: int
    sentry_dsn: str | None = field(repr=False)
    storage_budget_bytes: int | None = None
    alert_webhook_url: str | None = field(default=None, repr=False)
    object_lock_mode: str = "governance"
    s3_read_timeout_seconds: int = 60
    restore_verify_schedule: str = "daily"
    role_passwords: str = "include"
    lock_wait_seconds: int = 120
    restore_keep_previous_hours: int = 72
    """How long a restore's `_pre_restore_` and a rollback's `_rolled_back_` database stay."""
    recovery: RecoverySettings = field(default_factory=RecoverySettings)
    platform: PlatformSettings = field(default_factory=PlatformSettings)
    pitr: PitrSettings = field(default_factory=lambda: PitrSettings(pgvault_home() / "pitr"))
    restore_check_database_url: DatabaseUrl | None = None
    """Where restore proofs (the restorable check, the drill) restore; unset, a throwaway
    cluster pgvault starts itself. Never the backed-up server unless this names it."""
    database: str | None = None
    """The fleet database these settings are pinned to (engine/fleet.py `pin_database`), whose
    objects, locks and audit records live under `{environment}/{database}`; None for the
    single database of `DATABASE_URL`, under `{environment}` as ever."""
    server: str | None = None
    """The fleet server `database` is on, whose `staging_url_env` names its staging; None
    for the single database, whose staging is `STAGING_DATABASE_URL`."""
    backup_hour: int = 2
    """The UTC hour the backup is scheduled: 02:00, or a fleet database's `schedule_hour`."""
    pagerduty: PagerDutySettings = field(default_factory=PagerDutySettings)
    restore_load: RestoreLoad = field(default_factory=RestoreLoad)

    @property
    def restore_verify_weekly(self) -> bool:
        """RESTORE_VERIFY_SCHEDULE=weekly proves only Sunday backups (for large databases)."""
        return self.restore_verify_schedule == "weekly"

    @property
    def uses_s3(self) -> bool:
        return self.s3_bucket is not None

    def require_database(self) -> DatabaseUrl:
        if self.database_url is None:
            raise ConfigError("DATABASE_URL is not set; set it to the postgresql:// URL to back up")
        return self.database_url

    def target_url(self, target: str) -> DatabaseUrl:
        """The database behind a restore target name (`staging` or `production`)."""
        if target == "production":
            return self.require_database()
        if target == "staging":
            if self.staging_database_url is None and self.server is not None:
                raise ConfigError(
                    f"server {self.server!r} of the fleet file has no staging_url_env, so database "
                    f"{self.database!r} has no staging: add staging_url_env naming the variable "
                    "that holds another server's postgresql:// URL"
                )
            if self.staging_database_url is None:
                raise ConfigError(
                    "STAGING_DATABASE_URL is not set; set it to the staging database's postgresql:// URL"
                )
            return self.staging_database_url
        raise ConfigError(f"unknown target {target!r}; use staging or production")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"{name} must be a whole number from {low} to {high} (got {raw!r})"
        ) from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high} (got {value})")
    return value


def _optional(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _path(env: Mapping[str, str], name: str) -> Path | None:
    value = _optional(env, name)
    return Path(value).expanduser().absolute() if value else None


def _number(env: Mapping[str, str], name: str, default: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number from 0 to {high:g} (got {raw!r})") from None
    if not 0 <= value <= high:
        raise ConfigError(f"{name} must be a number from 0 to {high:g} (got {raw!r})")
    return value


def recovery_section(env: Mapping[str, str]) -> RecoverySettings:
    raw_ttl = env.get("RESTORE_REQUEST_TTL_HOURS", "").strip()
    ttl = DEFAULT_REQUEST_TTL
    if raw_ttl:
        try:
            hours = float(raw_ttl)
        except ValueError:
            hours = -1.0
        # At least a minute: a tinier float is above 0 yet rounds to a lifetime of nothing.
        if not 1 / 60 <= hours <= 72:
            raise ConfigError(
                f"RESTORE_REQUEST_TTL_HOURS must be a number of hours from 0.017 (a minute) to 72 (got {raw_ttl!r})"
            )
        ttl = timedelta(hours=hours)
    queries = _path(env, "DRILL_QUERIES_FILE")
    if queries is not None and not queries.is_file():
        raise ConfigError(f"DRILL_QUERIES_FILE {queries} does not exist; point it at a SQL file")
    return RecoverySettings(
        approvers_file=_path(env, "RESTORE_APPROVERS_FILE"),
        request_ttl=ttl,
        drill_queries_file=queries,
    )


def pitr_section(env: Mapping[str, str], home: Path) -> PitrSettings:
    uri_style = (_optional(env, "PITR_S3_URI_STYLE") or "host").lower()
    if uri_style not in PITR_URI_STYLES:
        raise ConfigError(f"PITR_S3_URI_STYLE must be host or path (got {uri_style!r})")
    ca_file = _path(env, "PITR_S3_CA_FILE")
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(f"PITR_S3_CA_FILE {ca_file} does not exist; point it at a PEM file")
    endpoint = _optional(env, "PITR_S3_ENDPOINT")
    if endpoint is not None and not re.fullmatch(r"[A-Za-z0-9.-]+(:\d{1,5})?", endpoint):
        raise ConfigError(
            f"PITR_S3_ENDPOINT must be a host name with an optional :port, no scheme (got {endpoint!r})"
        )
    return PitrSettings(
        directory=_path(env, "PITR_DIR") or home / "pitr",
        max_lag_minutes=_int(env, "PITR_MAX_LAG_MINUTES", 15, 1, 10080),
        retention_days=_int(env, "PITR_RETENTION_DAYS", 7, 1, 9999),
        archive_push_timeout_seconds=_int(env, "PITR_ARCHIVE_PUSH_TIMEOUT_SECONDS", 60, 5, 3600),
        io_timeout_seconds=_int(env, "PITR_IO_TIMEOUT_SECONDS", 10, 1, 3600),
        s3_endpoint=endpoint,
        s3_region=_optional(env, "AWS_REGION")
        or _optional(env, "AWS_DEFAULT_REGION")
        or "us-east-1",
        s3_uri_style=uri_style,
        s3_ca_file=ca_file,
        s3_access_key=_optional(env, "AWS_ACCESS_KEY_ID"),
        s3_secret_key=_optional(env, "AWS_SECRET_ACCESS_KEY"),
    )


def _http_url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    value = _optional(env, name)
    if value and (urlsplit(value).scheme not in schemes or not urlsplit(value).netloc):
        raise ConfigError(
            f"{name} must be an {' or '.join(s + '://' for s in schemes)} URL (got {value!r})"
        )
    return value.rstrip("/") if value else None


def pagerduty_section(env: Mapping[str, str]) -> PagerDutySettings:
    key = _optional(env, "PAGERDUTY_ROUTING_KEY")
    if key is not None and not PAGERDUTY_ROUTING_KEY_PATTERN.match(key):
        # The value is a secret: the message describes it, never repeats it.
        raise ConfigError(
            "PAGERDUTY_ROUTING_KEY is not a routing key (8 to 128 letters, digits, - or _); "
            "copy the Events API v2 integration key of the PagerDuty service"
        )
    warnings = (_optional(env, "PAGERDUTY_WARNINGS") or "false").lower()
    if warnings not in ("true", "false"):
        raise ConfigError(f"PAGERDUTY_WARNINGS must be true or false (got {warnings!r})")
    return PagerDutySettings(
        routing_key=key,
        # PagerDuty's client speaks HTTPS only.
        events_url=_http_url(env, "PAGERDUTY_EVENTS_URL", ("https",)),
        warnings=warnings == "true",
        dagster_url=_http_url(env, "DAGSTER_UI_URL", ("http", "https")),
    )


def platform_section(env: Mapping[str, str] | None = None) -> PlatformSettings:
    """The one section the definitions read on their own, when the code location loads."""
    env = os.environ if env is None else env
    raw_start = env.get("BACKUP_START_DATE", "").strip()
    try:
        start = date.fromisoformat(raw_start) if raw_start else None
    except ValueError:
        raise ConfigError(
            f"BACKUP_START_DATE must be a date like 2025-01-01 (got {raw_start!r})"
        ) from None
    retries = _number(env, "BACKUP_MAX_RETRIES", 3, 20)
    if retries != int(retries):
        raise ConfigError(f"BACKUP_MAX_RETRIES must be a whole number (got {retries:g})")
    return PlatformSettings(
        start_date=start,
        max_retries=int(retries),
        retry_delay_seconds=_number(env, "BACKUP_RETRY_DELAY_SECONDS", 60, 3600),
        fleet_file=_path(env, "PGVAULT_FLEET_FILE"),
    )


def pgvault_home(env: Mapping[str, str] | None = None) -> Path:
    """Where the embedded default keeps its key, store and Dagster instance: one fixed place,
    whatever the current directory, so a command run from elsewhere never starts a second
    store with a new key. `PGVAULT_HOME`, else `$XDG_DATA_HOME/pgvault`, else
    `~/.local/share/pgvault`."""
    env = os.environ if env is None else env
    if home := _optional(env, "PGVAULT_HOME"):
        return Path(home).expanduser().absolute()
    data = _optional(env, "XDG_DATA_HOME") or str(Path("~/.local/share").expanduser())
    return Path(data).expanduser().absolute() / "pgvault"


def environment_name(env: Mapping[str, str]) -> str:
    """`ENVIRONMENT_NAME`, checked, without the rest of the settings: a run is tagged with its
    environment before anything else about it is read."""
    environment = env.get("ENVIRONMENT_NAME", "").strip() or "development"
    if not ENVIRONMENT_NAME_PATTERN.match(environment):
        raise ConfigError(
            "ENVIRONMENT_NAME must be lowercase letters, digits, '-' or '_' (at most 63), "
            f"starting with a letter or digit (got {environment!r})"
        )
    return environment


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read pgvault's settings from the environment; raise `ConfigError` on any bad value."""
    env = os.environ if env is None else env
    base = pgvault_home(env)

    environment = environment_name(env)

    def url(name: str) -> DatabaseUrl | None:
        raw = _optional(env, name)
        return DatabaseUrl.parse(raw, name) if raw else None

    bucket = _optional(env, "BACKUP_S3_BUCKET")
    kms_key_id = _optional(env, "BACKUP_KMS_KEY_ID")
    if bool(bucket) != bool(kms_key_id):
        missing = "BACKUP_KMS_KEY_ID" if bucket else "BACKUP_S3_BUCKET"
        raise ConfigError(
            f"{missing} is not set; set both BACKUP_S3_BUCKET and BACKUP_KMS_KEY_ID for S3, "
            "or neither for the local store"
        )
    if bucket and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ConfigError(f"BACKUP_S3_BUCKET is not a valid S3 bucket name (got {bucket!r})")

    budget_raw = _optional(env, "BACKUP_STORAGE_BUDGET_BYTES")
    budget = _int(env, "BACKUP_STORAGE_BUDGET_BYTES", 0, 1, 2**62) if budget_raw else None

    webhook = _optional(env, "ALERT_WEBHOOK_URL")
    if webhook and urlsplit(webhook).scheme not in ("http", "https"):
        raise ConfigError("ALERT_WEBHOOK_URL must be an http:// or https:// URL")

    lock_mode = (_optional(env, "BACKUP_OBJECT_LOCK_MODE") or "governance").lower()
    if lock_mode not in OBJECT_LOCK_MODES:
        raise ConfigError(
            f"BACKUP_OBJECT_LOCK_MODE must be governance or compliance (got {lock_mode!r})"
        )

    verify_schedule = (_optional(env, "RESTORE_VERIFY_SCHEDULE") or "daily").lower()
    if verify_schedule not in RESTORE_VERIFY_SCHEDULES:
        raise ConfigError(
            f"RESTORE_VERIFY_SCHEDULE must be daily or weekly (got {verify_schedule!r})"
        )

    role_passwords = (_optional(env, "BACKUP_ROLE_PASSWORDS") or "include").lower()
    if role_passwords not in ROLE_PASSWORD_CHOICES:
        raise ConfigError(
            f"BACKUP_ROLE_PASSWORDS must be include or exclude (got {role_passwords!r})"
        )

    local_dir = Path(_optional(env, "BACKUP_LOCAL_DIR") or base / "store")
    key_file = Path(_optional(env, "BACKUP_LOCAL_KEY_FILE") or base / "backup.key")

    retention = RetentionPolicy(
        daily_days=_int(env, "BACKUP_RETENTION_DAYS_DAILY", 30, 1, 36500),
        weekly_days=_int(env, "BACKUP_RETENTION_DAYS_WEEKLY", 90, 1, 36500),
        monthly_days=_int(env, "BACKUP_RETENTION_DAYS_MONTHLY", 365, 1, 36500),
    )
    pitr = pitr_section(env, base)
    if pitr.retention_days > retention.daily_days:
        # The window is a finer view of the days the daily dumps cover, never a longer one.
        raise ConfigError(
            f"PITR_RETENTION_DAYS ({pitr.retention_days}) is longer than "
            f"BACKUP_RETENTION_DAYS_DAILY ({retention.daily_days}); keep the point-in-time "
            "window inside the daily tier"
        )
    return Settings(
        environment=environment,
        database_url=url("DATABASE_URL"),
        staging_database_url=url("STAGING_DATABASE_URL"),
        restore_check_database_url=url("RESTORE_CHECK_DATABASE_URL"),
        s3_bucket=bucket,
        kms_key_id=kms_key_id,
        local_dir=local_dir.expanduser().absolute(),
        local_key_file=key_file.expanduser().absolute(),
        retention=retention,
        compression_level=_int(env, "BACKUP_COMPRESSION_LEVEL", 2, 0, 3),
        sentry_dsn=_optional(env, "SENTRY_DSN"),
        storage_budget_bytes=budget,
        alert_webhook_url=webhook,
        object_lock_mode=lock_mode,
        s3_read_timeout_seconds=_int(env, "BACKUP_S3_READ_TIMEOUT_SECONDS", 60, 1, 3600),
        restore_verify_schedule=verify_schedule,
        role_passwords=role_passwords,
        lock_wait_seconds=_int(env, "BACKUP_LOCK_WAIT_SECONDS", 120, 1, 86400),
        restore_keep_previous_hours=_int(env, "RESTORE_KEEP_PREVIOUS_HOURS", 72, 1, 87600),
        recovery=recovery_section(env),
        platform=platform_section(env),
        pitr=pitr,
        pagerduty=pagerduty_section(env),
        restore_load=RestoreLoad(
            loaders=_int(env, "RESTORE_PARALLEL_LOADERS", default_restore_loaders(), 1, 16),
            read_ahead_bytes=_int(env, "RESTORE_READ_AHEAD_MIB", 256, 1, 1024) * MIB,
        ),
    )
