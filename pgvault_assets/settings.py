"""Environment → one frozen `Settings`, with a section per concern.

Each variable is declared once, below, as a field of a pydantic model: its type,
default, bounds, whether it is secret and what it means (the README's table is generated from
these declarations, `scripts/settings_table.py`). Every variable is read and validated here,
once per command, so a bad value fails at start with one line naming the variable. Database
URLs are kept as `DatabaseUrl`, whose `str()` hides the password. Sections: storage and keys
(the top level), `retention`, `recovery` (approvals, drills) and `platform` (what shapes the
Dagster definitions themselves).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import annotated_types
from pydantic import (
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from pgvault_assets.errors import ConfigError

ENVIRONMENT_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# S3 Object Lock modes for backups in a bucket that has Object Lock: governance can be lifted
# by a principal granted s3:BypassGovernanceRetention, compliance by no one until it expires.
OBJECT_LOCK_MODES = ("governance", "compliance")
RESTORE_VERIFY_SCHEDULES = ("daily", "weekly")
ROLE_PASSWORD_CHOICES = ("include", "exclude")
PITR_URI_STYLES = ("host", "path")
PAGERDUTY_ROUTING_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
MIB = 1024 * 1024


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


def default_restore_loaders() -> int:
    """The cores this host may use (the server's, as far as it can tell), at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


# --------------------------------------------------------------------------------------------
# The declarations: one field per environment variable
# --------------------------------------------------------------------------------------------

SecretKind = Literal["value", "password"]
"""How a variable is secret: its whole `value` (a key, a DSN), or the `password` in its URL."""


def variable(
    default: Any = None,
    meaning: str = "",
    *,
    shown: str | None = None,
    secret: SecretKind | None = None,
    shared: bool = False,
    **bounds: Any,
) -> Any:
    """One variable's declaration: `meaning` and `shown` (its default as the README says it,
    when the value alone would not tell) feed the README's table, `secret` the redaction.
    `shared` marks another tool's variable (boto3's, XDG's, Dagster's) that pgvault reads as it
    finds it: the Dagster resources leave it unbound, so a run never needs it set."""
    extra: dict[str, Any] = {"shown": shown}
    if secret:
        extra["secret"] = secret
    if shared:
        extra["shared"] = True
    if "default_factory" in bounds:
        return Field(description=meaning, json_schema_extra=extra, **bounds)
    return Field(default, description=meaning, json_schema_extra=extra, **bounds)


class Variables(BaseModel):
    """A group of pgvault's environment variables; each field is the variable of its name in
    upper case.

    A plain model over the environment's mapping, not pydantic-settings: every variable is a
    scalar, so reading one is a lookup, and the CLI starts a tenth of a second sooner without
    that package's imports (bench/bench_cli.py)."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        arbitrary_types_allowed=True,
        alias_generator=AliasGenerator(validation_alias=str.upper),
        # Built when a group is first read: a command reads one or two of them.
        defer_build=True,
    )

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None) -> Any:
        """Read and validate this group from `env` (the process environment by default), values
        stripped and blank ones unset, as pgvault always has; a bad value raises `ConfigError`,
        one line naming the variable."""
        given = os.environ if env is None else env
        values = {name: value.strip() for name, value in given.items() if value.strip()}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise _config_error(cls, exc) from None

    @field_validator("*", mode="before")
    @classmethod
    def _whole_number(cls, value: Any, info: ValidationInfo) -> Any:
        """A whole number as Python's `int()` reads it, so `5.0` is refused as it always was."""
        declaration = cls.model_fields[str(info.field_name)]
        if not isinstance(value, str) or not _is_int(declaration.annotation):
            return value
        try:
            return int(value)
        except ValueError:
            low, high = bounds(declaration)
            raise ConfigError(
                f"{_variable_name(info)} must be a whole number from {low} to {high} "
                f"(got {value!r})"
            ) from None

    @classmethod
    def variables(cls) -> Iterator[tuple[str, FieldInfo]]:
        """Each (variable name, declaration) of this group, in declaration order."""
        for name, info in cls.model_fields.items():
            yield name.upper(), info


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _kind(info: FieldInfo) -> str | None:
    kind = _extra(info).get("secret")
    return kind if isinstance(kind, str) else None


def bounds(info: FieldInfo) -> tuple[Any, Any]:
    """A declaration's (lowest, highest) allowed value, None where it has none: the error
    messages and the README's table both say them."""
    low = high = None
    for rule in info.metadata:
        if isinstance(rule, annotated_types.Ge):
            low = rule.ge
        elif isinstance(rule, annotated_types.Le):
            high = rule.le
    return low, high


def _config_error(cls: type[Variables], exc: ValidationError) -> ConfigError:
    """pydantic's first error as pgvault's one line: `VARIABLE must be ... (got ...)`."""
    error = exc.errors(include_url=False)[0]
    name = str(error["loc"][0]) if error["loc"] else "a setting"
    raw = error.get("input")
    info = cls.model_fields.get(name.lower())
    if info is not None and error["type"] == "literal_error":
        allowed = " or ".join(str(c) for c in choices(info.annotation))
        return ConfigError(f"{name} must be {allowed} (got {raw!r})")
    if info is not None and bounds(info) != (None, None):
        low, high = bounds(info)
        if _is_int(info.annotation):
            return ConfigError(f"{name} must be a whole number from {low} to {high} (got {raw})")
        return ConfigError(f"{name} must be a number from {low:g} to {high:g} (got {raw!r})")
    if info is not None and _kind(info):  # never repeat a secret
        return ConfigError(f"{name} is not valid: {error['msg']}")
    return ConfigError(f"{name} is not valid: {error['msg']} (got {raw!r})")


def choices(annotation: Any) -> tuple[Any, ...]:
    """The values a `Literal` declaration allows, in order; () for any other type."""
    for candidate in (annotation, *get_args(annotation)):
        if get_origin(candidate) is Literal:
            return get_args(candidate)
    return ()


def _is_int(annotation: Any) -> bool:
    return annotation is int or int in get_args(annotation)


def _variable_name(info: ValidationInfo) -> str:
    return str(info.field_name).upper()


def _lowered(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _absolute(value: Any) -> Any:
    return Path(value).expanduser().absolute() if isinstance(value, str) else value


def _check_http_url(value: str | None, name: str, schemes: tuple[str, ...]) -> None:
    if value is not None and (urlsplit(value).scheme not in schemes or not urlsplit(value).netloc):
        raise ConfigError(
            f"{name} must be an {' or '.join(s + '://' for s in schemes)} URL (got {value!r})"
        )


class HomeVariables(Variables):
    """Where the embedded default lives."""

    pgvault_home: Path | None = variable(
        None,
        "where the embedded default keeps its store, key file and Dagster instance: one fixed "
        "place, whatever directory a command runs from",
        shown="`$XDG_DATA_HOME/pgvault`, else `~/.local/share/pgvault`",
    )
    xdg_data_home: Path | None = variable(
        None,
        "the XDG base directory `PGVAULT_HOME` defaults under",
        shown="`~/.local/share`",
        shared=True,
    )

    _home_paths = field_validator("pgvault_home", "xdg_data_home", mode="before")(_absolute)


class NameVariables(Variables):
    """The environment's name, read on its own: a run is tagged with it before anything else."""

    environment_name: str = variable("development", "first part of every object key")

    @field_validator("environment_name", mode="before")
    @classmethod
    def _safe_key_prefix(cls, value: Any) -> Any:
        if not ENVIRONMENT_NAME_PATTERN.match(str(value)):
            raise ConfigError(
                "ENVIRONMENT_NAME must be lowercase letters, digits, '-' or '_' (at most 63), "
                f"starting with a letter or digit (got {value!r})"
            )
        return value


class StorageVariables(NameVariables):
    """The databases, the store and keys, retention, and what a backup and a restore do."""

    database_url: DatabaseUrl | None = variable(
        None,
        "the production database, the one backed up (`postgresql://user:pass@host:port/db`)",
        shown="—",
        secret="password",
    )
    staging_database_url: DatabaseUrl | None = variable(
        None,
        "the staging restore target: another database than `DATABASE_URL`'s, on the same "
        'server or another (see "Staging is never production")',
        shown="—",
        secret="password",
    )
    backup_s3_bucket: str | None = variable(
        None,
        "set with `BACKUP_KMS_KEY_ID`: backups in this S3 bucket",
        shown="unset: local store",
    )
    backup_kms_key_id: str | None = variable(
        None,
        "set with `BACKUP_S3_BUCKET`: data keys from this KMS key (key id, ARN or `alias/...`)",
        shown="unset: local store",
    )
    backup_local_dir: Path | None = variable(
        None, "the local store (embedded default)", shown="`$PGVAULT_HOME/store`"
    )
    backup_local_key_file: Path | None = variable(
        None,
        "the local 256-bit key, created owner-only on first use, never overwritten, and never "
        "created where backups made with a key already exist",
        shown="`$PGVAULT_HOME/backup.key`",
    )
    backup_retention_days_daily: int = variable(
        30,
        "how long daily backups are kept, in days",
        ge=1,
        le=36500,
    )
    backup_retention_days_weekly: int = variable(
        90,
        "how long weekly backups are kept: the first backup of each week (Sunday's, when it "
        "succeeded; weeks begin on Sunday), so a failed Sunday never leaves its week without "
        "a copy",
        ge=1,
        le=36500,
    )
    backup_retention_days_monthly: int = variable(
        365,
        "how long monthly backups are kept: the first of each month (the 1st's, when it "
        "succeeded), so a failed 1st never leaves its month without a copy",
        ge=1,
        le=36500,
    )
    backup_compression_level: int = variable(2, "ISA-L gzip level", ge=0, le=3)
    backup_lock_wait_seconds: int = variable(
        120,
        "how long `pg_dump` waits for a table lock (a migration's, say) before giving up that "
        "attempt, naming the table and who held it; the retry comes later. It never queues "
        "behind such a lock with the application's queries queued behind it",
        ge=1,
        le=86400,
    )
    backup_role_passwords: Literal["include", "exclude"] = variable(
        "include",
        "whether the server context keeps the roles' password hashes (where the backup role "
        "may read `pg_authid`)",
    )
    backup_storage_budget_bytes: int | None = variable(
        None, "storage above this draws a warning", shown="unset", ge=1, le=2**62
    )
    sentry_dsn: SecretStr | None = variable(
        None, "where failures and alerts are reported", shown="unset", secret="value"
    )
    alert_webhook_url: SecretStr | None = variable(
        None, "a Slack-compatible webhook for alerts", shown="unset", secret="value"
    )
    backup_s3_read_timeout_seconds: int = variable(
        60,
        "how long a stalled S3 connection is waited for before it is retried",
        ge=1,
        le=3600,
    )
    backup_object_lock_mode: Literal["governance", "compliance"] = variable(
        "governance", "the S3 Object Lock mode for backups when the bucket has Object Lock"
    )
    restore_keep_previous_hours: int = variable(
        72,
        "how long the database a restore replaced (`<db>_pre_restore_<time>`) and the one a "
        "rollback replaced (`<db>_rolled_back_<time>`) are kept, counted from the time in the "
        "name; the weekly maintenance then drops them, audited. `restore-from-backup` and "
        "`rollback-restore` say until when",
        ge=1,
        le=87600,
    )
    restore_parallel_loaders: int = variable(
        meaning="how many `psql` sessions a restore loads the dump over; 1 loads it all "
        "through one",
        shown="the host's cores, at most 8",
        default_factory=default_restore_loaders,
        ge=1,
        le=16,
    )
    restore_read_ahead_mib: int = variable(
        256,
        "how much of the dump a restore reads ahead of its sessions, in MiB, in memory (never "
        "spilled): a table larger than this streams through one session at the pace it loads",
        ge=1,
        le=1024,
    )
    restore_verify_schedule: Literal["daily", "weekly"] = variable(
        "daily",
        "how often backups are proven restorable: every one, or only Sunday's (for large "
        'databases); see "How long the daily run takes"',
    )
    restore_check_database_url: DatabaseUrl | None = variable(
        None,
        "a server for restore proofs (the `restorable` check, the drill): each restores into a "
        "scratch database there, dropped afterwards",
        shown="unset: a throwaway cluster (below)",
        secret="password",
    )
    dagster_pg_url: SecretStr | None = variable(
        None,
        "Dagster's own database for the production instance (`dagster.yaml`), read by Dagster",
        shown="—",
        secret="password",
        shared=True,
    )

    @field_validator(
        "database_url", "staging_database_url", "restore_check_database_url", mode="before"
    )
    @classmethod
    def _database_url(cls, value: Any, info: ValidationInfo) -> Any:
        return DatabaseUrl.parse(value, _variable_name(info)) if isinstance(value, str) else value

    @field_validator("backup_s3_bucket")
    @classmethod
    def _bucket_name(cls, value: str | None) -> str | None:
        if value and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
            raise ConfigError(f"BACKUP_S3_BUCKET is not a valid S3 bucket name (got {value!r})")
        return value

    @field_validator("alert_webhook_url")
    @classmethod
    def _webhook(cls, value: SecretStr | None) -> SecretStr | None:
        if value and urlsplit(value.get_secret_value()).scheme not in ("http", "https"):
            raise ConfigError("ALERT_WEBHOOK_URL must be an http:// or https:// URL")
        return value

    _lowered_choices = field_validator(
        "backup_role_passwords",
        "backup_object_lock_mode",
        "restore_verify_schedule",
        mode="before",
    )(_lowered)
    _storage_paths = field_validator("backup_local_dir", "backup_local_key_file", mode="before")(
        _absolute
    )

    @model_validator(mode="after")
    def _s3_needs_both(self) -> StorageVariables:
        if bool(self.backup_s3_bucket) != bool(self.backup_kms_key_id):
            missing = "BACKUP_KMS_KEY_ID" if self.backup_s3_bucket else "BACKUP_S3_BUCKET"
            raise ConfigError(
                f"{missing} is not set; set both BACKUP_S3_BUCKET and BACKUP_KMS_KEY_ID for "
                "S3, or neither for the local store"
            )
        return self


class PagerDutyVariables(Variables):
    """Paging on-call through PagerDuty's Events API v2."""

    pagerduty_routing_key: SecretStr | None = variable(
        None,
        'a PagerDuty Events API v2 integration key: pages on-call (see "Alerting and on-call")',
        shown="unset: no paging",
        secret="value",
    )
    pagerduty_events_url: str | None = variable(
        None,
        "another Events API host (`https://` only): a proxy, or a test's receiver",
        shown="`https://events.pagerduty.com`",
    )
    pagerduty_warnings: bool = variable(False, "`true`: warnings page too (as `warning` severity)")
    dagster_ui_url: str | None = variable(
        None,
        "the Dagster UI's address, so a page links to the run it is about",
        shown="unset: no link",
    )

    @field_validator("pagerduty_routing_key")
    @classmethod
    def _routing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not PAGERDUTY_ROUTING_KEY_PATTERN.match(value.get_secret_value()):
            # The value is a secret: the message describes it, never repeats it.
            raise ConfigError(
                "PAGERDUTY_ROUTING_KEY is not a routing key (8 to 128 letters, digits, - or _); "
                "copy the Events API v2 integration key of the PagerDuty service"
            )
        return value

    @field_validator("pagerduty_warnings", mode="before")
    @classmethod
    def _true_or_false(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lower() not in ("true", "false"):
                raise ConfigError(f"PAGERDUTY_WARNINGS must be true or false (got {value!r})")
            return value.lower() == "true"
        return value

    @field_validator("pagerduty_events_url")
    @classmethod
    def _events_url(cls, value: str | None) -> str | None:
        # PagerDuty's client speaks HTTPS only.
        _check_http_url(value, "PAGERDUTY_EVENTS_URL", ("https",))
        return value

    @field_validator("dagster_ui_url")
    @classmethod
    def _ui_url(cls, value: str | None) -> str | None:
        _check_http_url(value, "DAGSTER_UI_URL", ("http", "https"))
        return value


class PlatformVariables(Variables):
    """What shapes the Dagster definitions, read when the code location loads."""

    backup_start_date: date | None = variable(
        None,
        "first partition of the `database_backup` asset in Dagster",
        shown="the environment's first backup (yesterday before there is one)",
    )
    backup_max_retries: int = variable(
        3,
        "retries of a failed backup step (exponential backoff with jitter); `pgvault backup` "
        "at a terminal makes none unless `--retries N`",
        ge=0,
        le=20,
    )
    backup_retry_delay_seconds: float = variable(
        60.0,
        "the first retry's delay, doubled for each next one",
        ge=0,
        le=3600,
        allow_inf_nan=False,
    )
    pgvault_fleet_file: Path | None = variable(
        None,
        'a YAML file of the servers and databases to back up (see "Many databases")',
        shown="unset: `DATABASE_URL` alone",
    )

    _fleet_path = field_validator("pgvault_fleet_file", mode="before")(_absolute)

    @field_validator("backup_start_date", mode="before")
    @classmethod
    def _iso_date(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ConfigError(
                f"BACKUP_START_DATE must be a date like 2025-01-01 (got {value!r})"
            ) from None

    @field_validator("backup_max_retries", mode="before")
    @classmethod
    def _whole_retries(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(
                f"BACKUP_MAX_RETRIES must be a number from 0 to 20 (got {value!r})"
            ) from None
        if not 0 <= number <= 20:
            raise ConfigError(f"BACKUP_MAX_RETRIES must be a number from 0 to 20 (got {value!r})")
        if number != int(number):
            raise ConfigError(f"BACKUP_MAX_RETRIES must be a whole number (got {number:g})")
        return int(number)


class RecoveryVariables(Variables):
    """Approvals for production operations, and the drill."""

    restore_approvers_file: Path | None = variable(
        None,
        "OpenSSH allowed-signers file naming who may approve production changes",
        shown="unset: production refused",
    )
    restore_request_ttl_hours: float = variable(
        4.0, "how long a production request stays valid", ge=1 / 60, le=72
    )
    drill_queries_file: Path | None = variable(
        None,
        "SQL the recovery drill runs against the restored database",
        shown="every table readable",
    )

    _recovery_paths = field_validator(
        "restore_approvers_file", "drill_queries_file", mode="before"
    )(_absolute)

    @field_validator("restore_request_ttl_hours", mode="before")
    @classmethod
    def _hours(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            hours = float(value)
        except ValueError:
            hours = math.nan
        # At least a minute: a tinier float is above 0 yet rounds to a lifetime of nothing.
        if not 1 / 60 <= hours <= 72:
            raise ConfigError(
                "RESTORE_REQUEST_TTL_HOURS must be a number of hours from 0.017 (a minute) to 72 "
                f"(got {value!r})"
            )
        return hours

    @field_validator("drill_queries_file")
    @classmethod
    def _queries_exist(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ConfigError(f"DRILL_QUERIES_FILE {value} does not exist; point it at a SQL file")
        return value


class PitrVariables(Variables):
    """Point-in-time recovery by pgBackRest."""

    pitr_dir: Path | None = variable(
        None,
        "point-in-time recovery: pgBackRest's configuration (0600, owned by `postgres`), its "
        "locks and logs, and the local WAL repository in the embedded default. The `postgres` "
        "OS user must reach it: `pgvault pitr init` says so if it cannot",
        shown="`$PGVAULT_HOME/pitr`",
    )
    pitr_max_lag_minutes: int = variable(
        15,
        "the archive sensor alerts when the newest archived WAL is older than this while WAL "
        "waits to be archived",
        ge=1,
        le=10080,
    )
    pitr_retention_days: int = variable(
        7,
        "how long full base backups (and the WAL they need) are kept, by pgBackRest's own "
        "`expire` after each successful backup (so nothing expires while backups fail or "
        "stop); at most `BACKUP_RETENTION_DAYS_DAILY`",
        ge=1,
        le=9999,
    )
    pitr_archive_push_timeout_seconds: int = variable(
        60,
        "the bound around each `archive-push` in `archive_command` (`timeout N`): a push to an "
        "S3 endpoint that never answers fails then, and is retried",
        ge=5,
        le=3600,
    )
    pitr_io_timeout_seconds: int = variable(
        10,
        "pgBackRest's `io-timeout`: how long one S3 read or write may make no progress",
        ge=1,
        le=3600,
    )
    pitr_s3_endpoint: str | None = variable(
        None,
        "where pgBackRest reaches S3 (`host[:port]`, no scheme)",
        shown="`s3.<region>.amazonaws.com`",
    )
    pitr_s3_uri_style: Literal["host", "path"] = variable(
        "host", "how pgBackRest addresses the bucket"
    )
    pitr_s3_ca_file: Path | None = variable(
        None, "a CA file for a private S3 endpoint", shown="system CAs"
    )
    aws_region: str | None = variable(
        None,
        "the S3 region pgBackRest writes into its configuration (boto3 reads it too)",
        shown="`AWS_DEFAULT_REGION`, else `us-east-1`",
        shared=True,
    )
    aws_default_region: str | None = variable(
        None, "the region when `AWS_REGION` is unset", shown="unset", shared=True
    )
    aws_access_key_id: str | None = variable(
        None,
        "with `AWS_SECRET_ACCESS_KEY`, the S3 keys pgBackRest writes into its 0600 "
        "configuration (the archive command runs with the server's environment)",
        shown="unset: the instance role",
        shared=True,
    )
    aws_secret_access_key: SecretStr | None = variable(
        None,
        "the secret half of `AWS_ACCESS_KEY_ID`",
        shown="unset: the instance role",
        secret="value",
        shared=True,
    )

    _lowered_style = field_validator("pitr_s3_uri_style", mode="before")(_lowered)
    _pitr_paths = field_validator("pitr_dir", "pitr_s3_ca_file", mode="before")(_absolute)

    @field_validator("pitr_s3_ca_file")
    @classmethod
    def _ca_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ConfigError(f"PITR_S3_CA_FILE {value} does not exist; point it at a PEM file")
        return value

    @field_validator("pitr_s3_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9.-]+(:\d{1,5})?", value):
            raise ConfigError(
                "PITR_S3_ENDPOINT must be a host name with an optional :port, no scheme "
                f"(got {value!r})"
            )
        return value


class Environment(
    StorageVariables,
    HomeVariables,
    PagerDutyVariables,
    PlatformVariables,
    RecoveryVariables,
    PitrVariables,
):
    """Every variable pgvault reads, and the rules that span groups."""

    @model_validator(mode="after")
    def _pitr_inside_daily(self) -> Environment:
        if self.pitr_retention_days > self.backup_retention_days_daily:
            # The window is a finer view of the days the daily dumps cover, never a longer one.
            raise ConfigError(
                f"PITR_RETENTION_DAYS ({self.pitr_retention_days}) is longer than "
                f"BACKUP_RETENTION_DAYS_DAILY ({self.backup_retention_days_daily}); keep the "
                "point-in-time window inside the daily tier"
            )
        return self


GROUPS: tuple[type[Variables], ...] = (
    StorageVariables,
    HomeVariables,
    PagerDutyVariables,
    PlatformVariables,
    RecoveryVariables,
    PitrVariables,
)


def declared() -> dict[str, FieldInfo]:
    """Every variable pgvault reads, by name, with its declaration, in the README's order."""
    return {name: info for group in GROUPS for name, info in group.variables()}


def own_variables() -> tuple[str, ...]:
    """The variables that are pgvault's own, not another tool's it also reads."""
    return tuple(name for name, info in declared().items() if not _extra(info).get("shared"))


def secret_variables(kind: SecretKind) -> tuple[str, ...]:
    """The variables whose whole `value`, or the `password` in whose URL, is a secret."""
    return tuple(name for name, info in declared().items() if _kind(info) == kind)


def _default(group: type[Variables], name: str) -> Any:
    return group.model_fields[name].get_default(call_default_factory=True)


# --------------------------------------------------------------------------------------------
# The sections the rest of pgvault reads: plain frozen records, defaults from the declarations
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionPolicy:
    daily_days: int = _default(StorageVariables, "backup_retention_days_daily")
    weekly_days: int = _default(StorageVariables, "backup_retention_days_weekly")
    monthly_days: int = _default(StorageVariables, "backup_retention_days_monthly")


DEFAULT_REQUEST_TTL = timedelta(hours=_default(RecoveryVariables, "restore_request_ttl_hours"))
RECOVERY_TIME_OBJECTIVE = timedelta(hours=4)


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
    max_retries: int = _default(PlatformVariables, "backup_max_retries")
    retry_delay_seconds: float = _default(PlatformVariables, "backup_retry_delay_seconds")
    fleet_file: Path | None = None
    """`PGVAULT_FLEET_FILE`: the databases to back up (pgvault_assets/fleet.py); unset, `DATABASE_URL`
    alone, under the environment's own prefix, as a fleet of one."""


@dataclass(frozen=True)
class RestoreLoad:
    """How a restore loads the dump: `RESTORE_PARALLEL_LOADERS` psql sessions, and at most
    `RESTORE_READ_AHEAD_MIB` of it read ahead of them (held in memory, spilled nowhere)."""

    loaders: int = field(default_factory=default_restore_loaders)
    read_ahead_bytes: int = _default(StorageVariables, "restore_read_ahead_mib") * MIB


@dataclass(frozen=True)
class PitrSettings:
    """Point-in-time recovery by pgBackRest: the folder its configuration, local repository,
    locks and logs live under (one the `postgres` OS user can reach; each server's own place
    in it, its configuration file included, is `names.pitr_stanza`'s alone), how stale the WAL
    archive may grow, and how S3 is reached when the backups are in S3."""

    directory: Path
    max_lag_minutes: int = _default(PitrVariables, "pitr_max_lag_minutes")
    retention_days: int = _default(PitrVariables, "pitr_retention_days")
    archive_push_timeout_seconds: int = _default(PitrVariables, "pitr_archive_push_timeout_seconds")
    io_timeout_seconds: int = _default(PitrVariables, "pitr_io_timeout_seconds")
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_uri_style: str = _default(PitrVariables, "pitr_s3_uri_style")
    s3_ca_file: Path | None = None
    s3_access_key: str | None = field(default=None, repr=False)
    s3_secret_key: str | None = field(default=None, repr=False)

    @property
    def max_lag(self) -> timedelta:
        return timedelta(minutes=self.max_lag_minutes)


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
    object_lock_mode: str = _default(StorageVariables, "backup_object_lock_mode")
    s3_read_timeout_seconds: int = _default(StorageVariables, "backup_s3_read_timeout_seconds")
    restore_verify_schedule: str = _default(StorageVariables, "restore_verify_schedule")
    role_passwords: str = _default(StorageVariables, "backup_role_passwords")
    lock_wait_seconds: int = _default(StorageVariables, "backup_lock_wait_seconds")
    restore_keep_previous_hours: int = _default(StorageVariables, "restore_keep_previous_hours")
    """How long a restore's `_pre_restore_` and a rollback's `_rolled_back_` database stay."""
    recovery: RecoverySettings = field(default_factory=RecoverySettings)
    platform: PlatformSettings = field(default_factory=PlatformSettings)
    pitr: PitrSettings = field(default_factory=lambda: PitrSettings(pgvault_home() / "pitr"))
    restore_check_database_url: DatabaseUrl | None = None
    """Where restore proofs (the restorable check, the drill) restore; unset, a throwaway
    cluster pgvault starts itself. Never the backed-up server unless this names it."""
    database: str | None = None
    """The fleet database these settings are pinned to (pgvault_assets/fleet.py `pin_database`), whose
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


# --------------------------------------------------------------------------------------------
# Loaders: the environment (or any mapping) → the sections
# --------------------------------------------------------------------------------------------


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _recovery(env: RecoveryVariables) -> RecoverySettings:
    return RecoverySettings(
        approvers_file=env.restore_approvers_file,
        request_ttl=timedelta(hours=env.restore_request_ttl_hours),
        drill_queries_file=env.drill_queries_file,
    )


def _platform(env: PlatformVariables) -> PlatformSettings:
    return PlatformSettings(
        start_date=env.backup_start_date,
        max_retries=env.backup_max_retries,
        retry_delay_seconds=env.backup_retry_delay_seconds,
        fleet_file=env.pgvault_fleet_file,
    )


def _pitr(env: PitrVariables, home: Path) -> PitrSettings:
    return PitrSettings(
        directory=env.pitr_dir or home / "pitr",
        max_lag_minutes=env.pitr_max_lag_minutes,
        retention_days=env.pitr_retention_days,
        archive_push_timeout_seconds=env.pitr_archive_push_timeout_seconds,
        io_timeout_seconds=env.pitr_io_timeout_seconds,
        s3_endpoint=env.pitr_s3_endpoint,
        s3_region=env.aws_region or env.aws_default_region or "us-east-1",
        s3_uri_style=env.pitr_s3_uri_style,
        s3_ca_file=env.pitr_s3_ca_file,
        s3_access_key=env.aws_access_key_id,
        s3_secret_key=_secret(env.aws_secret_access_key),
    )


def _pagerduty(env: PagerDutyVariables) -> PagerDutySettings:
    return PagerDutySettings(
        routing_key=_secret(env.pagerduty_routing_key),
        events_url=env.pagerduty_events_url.rstrip("/") if env.pagerduty_events_url else None,
        warnings=env.pagerduty_warnings,
        dagster_url=env.dagster_ui_url.rstrip("/") if env.dagster_ui_url else None,
    )


def _home(env: HomeVariables) -> Path:
    if env.pgvault_home is not None:
        return env.pgvault_home
    data = env.xdg_data_home or Path("~/.local/share").expanduser().absolute()
    return data / "pgvault"


def recovery_section(env: Mapping[str, str]) -> RecoverySettings:
    return _recovery(RecoveryVariables.read(env))


def pitr_section(env: Mapping[str, str], home: Path) -> PitrSettings:
    return _pitr(PitrVariables.read(env), home)


def pagerduty_section(env: Mapping[str, str]) -> PagerDutySettings:
    return _pagerduty(PagerDutyVariables.read(env))


def platform_section(env: Mapping[str, str] | None = None) -> PlatformSettings:
    """The one section the definitions read on their own, when the code location loads."""
    return _platform(PlatformVariables.read(env))


def pgvault_home(env: Mapping[str, str] | None = None) -> Path:
    """Where the embedded default keeps its key, store and Dagster instance: one fixed place,
    whatever the current directory, so a command run from elsewhere never starts a second
    store with a new key. `PGVAULT_HOME`, else `$XDG_DATA_HOME/pgvault`, else
    `~/.local/share/pgvault`."""
    return _home(HomeVariables.read(env))


def environment_name(env: Mapping[str, str]) -> str:
    """`ENVIRONMENT_NAME`, checked, without the rest of the settings: a run is tagged with its
    environment before anything else about it is read."""
    name: str = NameVariables.read(env).environment_name
    return name


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read pgvault's settings from the environment; raise `ConfigError` on any bad value."""
    read: Environment = Environment.read(env)
    home = _home(read)
    return Settings(
        environment=read.environment_name,
        database_url=read.database_url,
        staging_database_url=read.staging_database_url,
        restore_check_database_url=read.restore_check_database_url,
        s3_bucket=read.backup_s3_bucket,
        kms_key_id=read.backup_kms_key_id,
        local_dir=read.backup_local_dir or home / "store",
        local_key_file=read.backup_local_key_file or home / "backup.key",
        retention=RetentionPolicy(
            daily_days=read.backup_retention_days_daily,
            weekly_days=read.backup_retention_days_weekly,
            monthly_days=read.backup_retention_days_monthly,
        ),
        compression_level=read.backup_compression_level,
        sentry_dsn=_secret(read.sentry_dsn),
        storage_budget_bytes=read.backup_storage_budget_bytes,
        alert_webhook_url=_secret(read.alert_webhook_url),
        object_lock_mode=read.backup_object_lock_mode,
        s3_read_timeout_seconds=read.backup_s3_read_timeout_seconds,
        restore_verify_schedule=read.restore_verify_schedule,
        role_passwords=read.backup_role_passwords,
        lock_wait_seconds=read.backup_lock_wait_seconds,
        restore_keep_previous_hours=read.restore_keep_previous_hours,
        recovery=_recovery(read),
        platform=_platform(read),
        pitr=_pitr(read, home),
        pagerduty=_pagerduty(read),
        restore_load=RestoreLoad(
            loaders=read.restore_parallel_loaders,
            read_ahead_bytes=read.restore_read_ahead_mib * MIB,
        ),
    )
