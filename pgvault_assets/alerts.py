"""Alerts to Sentry, a Slack-compatible webhook and PagerDuty; Sentry cron check-ins for the
daily backup.

Every alert kind (of each fleet database) has its own Sentry fingerprint, so a week of
identical failures is one issue with seven events, not seven issues. The check-in monitor has
the backup's schedule, so Sentry notices a missed backup even when Dagster itself is down.
Every event passes through `scrub_event`, which removes the secrets pgvault knows of and
anything shaped like one.

PagerDuty pages through the `pagerduty` package's Events API v2 client (PagerDuty's own,
maintained, with bounded retries and backoff on 429 and 5xx built in). `dagster-pagerduty` was
not used: it imports Dagster, which this layer must not, and it wraps the older `pypd` client.
An incident's `dedup_key` is the environment, database and alert kind, so a check that flaps
re-triggers the same incident and the alert that ends an episode resolves it.

`sentry_sdk` and `pagerduty` are imported where a sink that is set uses them, not at the top:
every run builds a notifier, and a backup without SENTRY_DSN or PAGERDUTY_ROUTING_KEY would
pay a tenth of a second importing them for nothing (tests/test_cli_imports.py holds this).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pgvault_assets.redact import redact
from pgvault_assets.settings import PagerDutySettings, Settings

if TYPE_CHECKING:
    import pagerduty

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
    resolves: tuple[str, ...] = ()
    """The alert kinds whose episode this notice ends (PagerDuty resolves their incidents)."""
    details: dict[str, str | int | float] = field(default_factory=dict)
    """The figures behind the alert, for PagerDuty's `custom_details`; never a secret."""


SINGLE_DATABASE = "default"  # the fleet of one's name (pgvault_assets/fleet.py SINGLE)
PAGERDUTY_SEVERITY = {"fatal": "critical", "error": "error", "warning": "warning", "info": "info"}
SUMMARY_LIMIT = 1024  # the Events API's bound on payload.summary
PAGE_ATTEMPTS = 4


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
    for value in (
        settings.sentry_dsn,
        settings.alert_webhook_url,
        settings.pagerduty.routing_key,
    ):
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
    import sentry_sdk  # deferred: see the module docstring
    from sentry_sdk.integrations.logging import LoggingIntegration

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


def dedup_key(environment: str, database: str | None, kind: str) -> str:
    """One PagerDuty incident per environment, database and kind of trouble."""
    return f"pgvault/{environment}/{database or SINGLE_DATABASE}/{kind}"


def component_of(kind: str) -> str:
    if kind.startswith("pitr_"):
        return "pitr"
    if kind.startswith("drill"):
        return "drill"
    if kind in ("restorable", "decrypts_fully", "checksum_mismatch"):
        return "restore_proof"
    return "backup"


@dataclass
class PagerDutySink:
    """Events API v2 events for the alerts that page; `events` and `send` kept apart so what
    is sent can be read without sending it."""

    settings: PagerDutySettings = field(repr=False)
    retry_sleep_seconds: float = 1.5
    """The first retry's wait; each next one doubles it (with jitter), PAGE_ATTEMPTS in all."""

    def events(
        self, alert: Alert, environment: str, database: str | None, secrets: list[str]
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """(action, dedup_key, event properties) for `alert`: a resolve per episode it ends, a
        trigger for an error or a fatal one (a warning only with PAGERDUTY_WARNINGS)."""
        if alert.resolves:
            return [("resolve", dedup_key(environment, database, k), {}) for k in alert.resolves]
        if alert.level == "info" or (alert.level == "warning" and not self.settings.warnings):
            return []
        where = f"{environment}/{database}" if database else environment
        summary = scrub_text(f"[{where}] {alert.kind}: {alert.message}", secrets)
        details = {
            "environment": environment,
            "database": database or SINGLE_DATABASE,
            "kind": alert.kind,
            **alert.tags,
            **alert.details,
        }
        properties: dict[str, Any] = {
            "payload": {
                "summary": summary[: SUMMARY_LIMIT - 1] + "…"
                if len(summary) > SUMMARY_LIMIT
                else summary,
                "severity": PAGERDUTY_SEVERITY[alert.level],
                "source": database or SINGLE_DATABASE,
                "component": component_of(alert.kind),
                "group": environment,
                "class": alert.kind,
                "custom_details": scrub_event(details, secrets),
            }
        }
        run_id = alert.tags.get("run_id")
        if run_id and self.settings.dagster_url:
            properties["links"] = [
                {"href": f"{self.settings.dagster_url}/runs/{run_id}", "text": "Dagster run"}
            ]
        return [("trigger", dedup_key(environment, database, alert.kind), properties)]

    def client(self) -> pagerduty.EventsApiV2Client:
        import pagerduty  # deferred: see the module docstring

        client = pagerduty.EventsApiV2Client(
            self.settings.routing_key or "", base_url=self.settings.events_url
        )
        # Bounded: the library retries 429 without end by default.
        client.retry = {status: PAGE_ATTEMPTS - 1 for status in (429, 500, 502, 503, 504)}
        client.max_http_attempts = PAGE_ATTEMPTS - 1
        client.max_network_attempts = PAGE_ATTEMPTS - 1
        client.sleep_timer = self.retry_sleep_seconds / 2
        client.timeout = 10
        return client

    def send(self, events: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Send each event; raise `pagerduty.Error` once the retries of one are spent."""
        if not events:
            return
        client = self.client()
        for action, key, properties in events:
            client.send_event(action, dedup_key=key, **properties)


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
    pagerduty: PagerDutySink | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Notifier:
        return cls(
            settings.environment,
            init_sentry(settings),
            settings.alert_webhook_url,
            known_secrets(settings),
            database=settings.database,
            backup_hour=settings.backup_hour,
            pagerduty=PagerDutySink(settings.pagerduty) if settings.pagerduty.routing_key else None,
        )

    @property
    def _where(self) -> str:
        return f"{self.environment}/{self.database}" if self.database else self.environment

    def send(self, alert: Alert) -> None:
        if self.sentry_enabled:
            self._to_sentry(alert)
        if self.webhook_url:
            self._to_webhook(alert, self.webhook_url)
        if self.pagerduty is not None:
            self._to_pagerduty(alert, self.pagerduty)

    def _to_pagerduty(self, alert: Alert, sink: PagerDutySink) -> None:
        """A page that cannot be sent is itself an alert, to the other sinks: on-call must
        hear that PagerDuty did not."""
        import pagerduty  # deferred: see the module docstring

        database = self.database or alert.tags.get("database")
        events = sink.events(alert, self.environment, database, self.secrets)
        try:
            sink.send(events)
        except (pagerduty.Error, OSError) as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            why = f"HTTP {status}" if status else type(exc).__name__
            _log.warning("PagerDuty did not accept the %s alert (%s)", alert.kind, why)
            failed = Alert(
                "pagerduty_failed",
                "error",
                f"PagerDuty did not accept the {alert.kind} alert ({why}) after "
                f"{PAGE_ATTEMPTS} attempts; check PAGERDUTY_ROUTING_KEY and the Events API, "
                f"and page on-call another way: {alert.message}",
                {**alert.tags, "failed_alert": alert.kind},
            )
            if self.sentry_enabled:
                self._to_sentry(failed)
            if self.webhook_url:
                self._to_webhook(failed, self.webhook_url)

    def _to_sentry(self, alert: Alert) -> None:
        import sentry_sdk  # deferred: see the module docstring

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
        import sentry_sdk  # deferred: see the module docstring
        from sentry_sdk.crons import capture_checkin

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
