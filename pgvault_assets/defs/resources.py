"""The engine's settings, vault and notifier as Dagster resources.

Fields are bound to `EnvVar`s, so the UI shows which variable feeds each one and never its
value, and a secret is read only when a run starts. A variable that is not set is not bound:
Dagster refuses an `EnvVar` for an unset variable, and the engine has a default for it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from dagster import ConfigurableResource, EnvVar

from pgvault_assets.alerts import Notifier
from pgvault_assets.engine.fleet import pin_database
from pgvault_assets.engine.vault import Vault
from pgvault_assets.settings import Settings, load_settings

SETTINGS_VARIABLES = (
    "ENVIRONMENT_NAME",
    "DATABASE_URL",
    "STAGING_DATABASE_URL",
    "RESTORE_CHECK_DATABASE_URL",
    "BACKUP_S3_BUCKET",
    "BACKUP_KMS_KEY_ID",
    "BACKUP_LOCAL_DIR",
    "BACKUP_LOCAL_KEY_FILE",
    "BACKUP_RETENTION_DAYS_DAILY",
    "BACKUP_RETENTION_DAYS_WEEKLY",
    "BACKUP_RETENTION_DAYS_MONTHLY",
    "BACKUP_COMPRESSION_LEVEL",
    "BACKUP_STORAGE_BUDGET_BYTES",
    "RESTORE_VERIFY_SCHEDULE",
    "PITR_DIR",
    "PITR_MAX_LAG_MINUTES",
    "PITR_RETENTION_DAYS",
)
ALERT_VARIABLES = ("SENTRY_DSN", "ALERT_WEBHOOK_URL", "PAGERDUTY_ROUTING_KEY")


class VaultResource(ConfigurableResource):
    """pgvault's settings and the store and keys they name.

    Each field overrides the environment variable of the same name in upper case; fields left
    unset fall back to the process environment, as the CLI reads it.
    """

    environment_name: str | None = None
    database_url: str | None = None
    staging_database_url: str | None = None
    restore_check_database_url: str | None = None
    backup_s3_bucket: str | None = None
    backup_kms_key_id: str | None = None
    backup_local_dir: str | None = None
    backup_local_key_file: str | None = None
    backup_retention_days_daily: str | None = None
    backup_retention_days_weekly: str | None = None
    backup_retention_days_monthly: str | None = None
    backup_compression_level: str | None = None
    backup_storage_budget_bytes: str | None = None
    restore_verify_schedule: str | None = None
    pitr_dir: str | None = None
    pitr_max_lag_minutes: str | None = None
    pitr_retention_days: str | None = None

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in SETTINGS_VARIABLES:
            value = getattr(self, name.lower())
            if value is not None:
                env[name] = value
        return env

    def settings(self, database: str | None = None) -> Settings:
        """The settings, pinned to the fleet database `database` when one is named."""
        env = self.environ()
        settings = load_settings(env)
        return settings if database is None else pin_database(settings, env, database)

    def vault(self, settings: Settings | None = None) -> Vault:
        """The vault of `settings` when the caller has read them already (once per run)."""
        return Vault.from_settings(settings or self.settings())


class AlertsResource(ConfigurableResource):
    """Where alerts go: Sentry when `SENTRY_DSN` is set, a webhook when `ALERT_WEBHOOK_URL` is,
    PagerDuty when `PAGERDUTY_ROUTING_KEY` is."""

    sentry_dsn: str | None = None
    alert_webhook_url: str | None = None
    pagerduty_routing_key: str | None = None

    def notifier(self, settings: Settings) -> Notifier:
        """A notifier that also knows `settings`' secrets, to scrub them from what it sends."""
        routing_key = self.pagerduty_routing_key or settings.pagerduty.routing_key
        return Notifier.from_settings(
            dataclasses.replace(
                settings,
                sentry_dsn=self.sentry_dsn or settings.sentry_dsn,
                alert_webhook_url=self.alert_webhook_url or settings.alert_webhook_url,
                pagerduty=dataclasses.replace(settings.pagerduty, routing_key=routing_key),
            )
        )


def _bound(names: tuple[str, ...]) -> dict[str, Any]:
    return {name.lower(): EnvVar(name) for name in names if os.environ.get(name)}


def resource_defs() -> dict[str, Any]:
    return {
        "vault": VaultResource(**_bound(SETTINGS_VARIABLES)),
        "alerts": AlertsResource(**_bound(ALERT_VARIABLES)),
    }
