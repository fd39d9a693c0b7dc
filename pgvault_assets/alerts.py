"""Alerts to Sentry and a Slack-compatible webhook; Sentry cron check-ins for the daily backup.

Every alert kind (of each fleet database) has its own Sentry fingerprint, so a week of
identical failures is one issue with seven events, not seven issues. The check-in monitor has
the backup's schedule, so Sentry notices a missed backup even when Dagster itself is down.
Every event passes through `scrub_event`, which removes the secrets pgvault knows of and
anything shaped like one.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import sentry_sdk
from sentry_sdk.crons import capture_checkin
from sentry_sdk.integrations.logging import LoggingIntegration

from pgvault_assets.redact import redact
from pgvault_assets.settings import Settings

Level = Literal["info", "warning", "error", "fatal"]
CheckinStatus = Literal["in_progress", "ok", "error"]

BACKUP_CRON = "0 2 * * *"
# The check-in monitor's floors; a large database's recent backups raise them (run_budget).
CHECKIN_MARGIN_MINUTES = 30
MAX_RUNTIME_MINUTES = 240
_log = logging.getLogger(__name__)

_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD", "SENTRY_DSN")


@dataclass(frozen=True)
class Alert:
    kind: str
    level: Level
    message: str
    tags: dict[str, str] = field(default_factory=dict)


def known_secrets(settings: Settings) -> list[str]:
    """Every secret value pgvault holds, longest first so a URL goes before its password."""
    secrets = []
    for url in (
        settings.database_url,
        settings.staging_database_url,
        settings.restore_check_database_url,
    ):
        if url is not None:
            secrets.append(url.secret)
            if url.password:
                secrets.append(url.password)
    for value in (settings.sentry_dsn, settings.alert_webhook_url):
        if value:
            secrets.append(value)
    secrets += [os.environ[name] for name in _SECRET_ENV if os.environ.get(name)]
    return sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)


def scrub_text(text: str, secrets: Iterable[str]) -> str:
    return redact(text, secrets)


def scrub_event(event: Any, secrets: list[str]) -> Any:
    """The event with every string scrubbed, recursively (messages, frames, breadcrumbs, env)."""
    if isinstance(event, str):
        return scrub_text(event, secrets)
    if isinstance(event, dict):
        return {key: scrub_event(value, secrets) for key, value in event.items()}
    if isinstance(event, list | tuple):
        return type(event)(scrub_event(value, secrets) for value in event)
    return event


def init_sentry(settings: Settings) -> bool:
    """Start the Sentry client when `SENTRY_DSN` is set; return whether it is on."""
    if not settings.sentry_dsn:
        return False
    client = sentry_sdk.get_client()
    if client.is_active() and client.dsn == settings.sentry_dsn:
        return True  # every sensor tick builds a notifier; the client is made once
    secrets = known_secrets(settings)
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.environment,
        send_default_pii=False,
        before_send=lambda event, _hint: scrub_event(event, secrets),
        before_breadcrumb=lambda crumb, _hint: scrub_event(crumb, secrets),
        # Log records stay breadcrumbs: events are the alerts, each with its fingerprint,
        # not every error line Dagster logs about the same failure.
        integrations=[LoggingIntegration(event_level=None)],
    )
    return True


def monitor_slug(environment: str, database: str | None = None) -> str:
    """The environment's monitor; a fleet database's own, so one database's missed backup is
    not hidden by the others' check-ins."""
    return f"pgvault-backup-{environment}" + (f"-{database}" if database else "")


def monitor_config(
    *,
    checkin_margin_minutes: int = CHECKIN_MARGIN_MINUTES,
    max_runtime_minutes: int = MAX_RUNTIME_MINUTES,
    backup_hour: int = 2,
) -> dict[str, Any]:
    """The daily backup (02:00 UTC, or a fleet database's hour), with room for retries before
    Sentry calls it missed."""
    return {
        "schedule": {"type": "crontab", "value": f"0 {backup_hour} * * *"},
        "timezone": "UTC",
        "checkin_margin": checkin_margin_minutes,
        "max_runtime": max_runtime_minutes,
        "failure_issue_threshold": 1,
        "recovery_threshold": 1,
    }


Post = Callable[[str, bytes], None]


def post_json(url: str, body: bytes) -> None:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@dataclass
class Notifier:
    """Sends alerts where the settings say; a channel that fails is logged, never raised."""

    environment: str
    sentry_enabled: bool
    webhook_url: str | None = field(default=None, repr=False)
    secrets: list[str] = field(default_factory=list, repr=False)
    post: Post = post_json
    database: str | None = None
    """The fleet database alerted about: tagged, in the fingerprint and the webhook's text."""
    backup_hour: int = 2

    @classmethod
    def from_settings(cls, settings: Settings) -> Notifier:
        return cls(
            settings.environment,
            init_sentry(settings),
            settings.alert_webhook_url,
            known_secrets(settings),
            database=settings.database,
            backup_hour=settings.backup_hour,
        )

    @property
    def _where(self) -> str:
        return f"{self.environment}/{self.database}" if self.database else self.environment

    def send(self, alert: Alert) -> None:
        if self.sentry_enabled:
            self._to_sentry(alert)
        if self.webhook_url:
            self._to_webhook(alert, self.webhook_url)

    def _to_sentry(self, alert: Alert) -> None:
        with sentry_sdk.new_scope() as scope:
            scope.set_tag("alert", alert.kind)
            scope.set_tag("environment", self.environment)
            if self.database:
                scope.set_tag("database", self.database)
            for key, value in alert.tags.items():
                scope.set_tag(key, value)
            # One Sentry issue per kind of trouble, and per database in a fleet.
            database = self.database or alert.tags.get("database")
            scope.fingerprint = ["pgvault", self.environment, alert.kind] + (
                [database] if database else []
            )
            sentry_sdk.capture_message(alert.message, level=alert.level)
        sentry_sdk.flush(timeout=5)

    def _to_webhook(self, alert: Alert, url: str) -> None:
        icon = {"info": ":white_check_mark:", "warning": ":warning:"}.get(
            alert.level, ":rotating_light:"
        )
        message = scrub_text(alert.message, self.secrets)
        payload = {
            "text": f"{icon} [{self._where}] {alert.level.upper()} {alert.kind}: {message}",
            "alert": alert.kind,
            "level": alert.level,
            "environment": self.environment,
            "tags": alert.tags,
        }
        if self.database:
            payload["database"] = self.database
        try:
            self.post(url, json.dumps(payload).encode())
        except Exception as exc:
            _log.warning(
                "alert webhook failed (%s); the alert went to Sentry only", type(exc).__name__
            )

    def checkin(
        self,
        status: CheckinStatus,
        *,
        check_in_id: str | None = None,
        duration_seconds: float | None = None,
        checkin_margin_minutes: int = CHECKIN_MARGIN_MINUTES,
        max_runtime_minutes: int = MAX_RUNTIME_MINUTES,
    ) -> str | None:
        """Report the backup run to Sentry's cron monitor; return the id to close it with.

        Every check-in carries the monitor's configuration, so its margins follow the
        backup's recent durations as they change.
        """
        if not self.sentry_enabled:
            return None
        sent = capture_checkin(
            monitor_slug=monitor_slug(self.environment, self.database),
            check_in_id=check_in_id,
            status=status,
            duration=duration_seconds,
            monitor_config=monitor_config(
                checkin_margin_minutes=checkin_margin_minutes,
                max_runtime_minutes=max_runtime_minutes,
                backup_hour=self.backup_hour,
            ),
        )
        sentry_sdk.flush(timeout=5)
        return sent
