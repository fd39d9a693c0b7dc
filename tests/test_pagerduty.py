"""PagerDuty's Events API v2 as a local receiver sees it: one incident per episode, resolved by
the same `dedup_key`, a valid payload, bounded retries, and nothing secret in it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import sentry_sdk
from dagster import AssetCheckEvaluation, AssetCheckSeverity
from test_defs.http_capture import Captured, capture_http

from pgvault_assets.alerts import PAGE_ATTEMPTS, Alert, Notifier
from pgvault_assets.cli import main
from pgvault_assets.defs.alerting import Channels, failed_check_alert, staleness_step
from pgvault_assets.defs.backup import RESTORABLE, SIZE_NOT_SHRUNK
from pgvault_assets.defs.naming import BACKUP_KEY
from pgvault_assets.defs.recovery import drill_alert
from pgvault_assets.defs.resources import AlertsResource, VaultResource
from pgvault_assets.engine.pitr.archive import archive_alert_step
from pgvault_assets.engine.recovery.drill import DrillReport
from pgvault_assets.errors import ConfigError
from pgvault_assets.settings import Settings, load_settings

ROUTING_KEY = "R0ut1ngKeyR0ut1ngKeyR0ut1ngKey00"
DB_PASSWORD = "s3cret-db-pass"
SEVERITIES = ("critical", "error", "warning", "info")
EVENTS_V2 = jsonschema.Draft202012Validator(
    json.loads((Path(__file__).parent / "fixtures" / "pagerduty-events-v2.schema.json").read_text())
)


@pytest.fixture
def receiver(local_env, monkeypatch, tmp_path) -> Iterator[Captured]:
    """The Events API over HTTPS (its client speaks nothing else) and the webhook beside it;
    one record of both, in order."""
    with capture_http(tmp_path) as captured, capture_http() as hook:
        hook.requests = captured.requests
        monkeypatch.setenv("SSL_CERT_FILE", str(captured.cert_file))
        monkeypatch.setenv("PAGERDUTY_ROUTING_KEY", ROUTING_KEY)
        monkeypatch.setenv("PAGERDUTY_EVENTS_URL", captured.events_url)
        monkeypatch.setenv("ALERT_WEBHOOK_URL", hook.url)
        monkeypatch.setenv("DAGSTER_UI_URL", "https://dagster.internal")
        monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{DB_PASSWORD}@db.internal:5432/app")
        yield captured
        for event in captured.pagerduty_events():  # every event any test sent, not a sample
            assert_events_v2(event)
    sentry_sdk.init()


def notifier(settings: Settings, database: str | None = None) -> Notifier:
    made = Notifier.from_settings(dataclasses.replace(settings, database=database))
    assert made.pagerduty is not None
    made.pagerduty.retry_sleep_seconds = 0.01  # the backoff's shape, not its length, is tested
    return made


def assert_events_v2(event: dict[str, Any]) -> None:
    """The Events API v2 schema's required fields and bounds."""
    EVENTS_V2.validate(event)
    assert event["routing_key"] == ROUTING_KEY
    assert event["event_action"] in ("trigger", "acknowledge", "resolve")
    assert isinstance(event["dedup_key"], str) and len(event["dedup_key"]) <= 255
    if event["event_action"] == "trigger":
        payload = event["payload"]
        assert isinstance(payload["summary"], str) and 0 < len(payload["summary"]) <= 1024
        assert payload["severity"] in SEVERITIES
        assert isinstance(payload["source"], str) and payload["source"]
        assert isinstance(payload.get("custom_details", {}), dict)


def test_a_staleness_episode_triggers_once_and_a_new_backup_resolves_it(receiver):
    send = notifier(load_settings()).send
    backed_up = datetime(2026, 3, 10, 2, 30, tzinfo=UTC)
    cursor = None
    for hours in (37, 38, 48, 60):  # a stale episode seen on four ticks
        alert, cursor = staleness_step(backed_up, cursor, backed_up + timedelta(hours=hours))
        if alert:
            send(alert)
    landed = backed_up + timedelta(hours=61)
    alert, cursor = staleness_step(landed, cursor, landed + timedelta(minutes=5))
    assert alert is not None
    send(alert)

    trigger, resolve = receiver.pagerduty_events()
    assert (trigger["event_action"], resolve["event_action"]) == ("trigger", "resolve")
    assert trigger["dedup_key"] == resolve["dedup_key"] == "pgvault/test/default/backup_stale"
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["source"] == "default"
    assert trigger["payload"]["group"] == "test"
    for event in (trigger, resolve):
        assert_events_v2(event)


def test_two_databases_page_with_two_keys(receiver):
    settings = load_settings()
    for database in ("billing", "wiki"):
        notifier(settings, database).send(Alert("backup_failed", "fatal", "backup failed"))

    keys = [event["dedup_key"] for event in receiver.pagerduty_events()]
    assert keys == ["pgvault/test/billing/backup_failed", "pgvault/test/wiki/backup_failed"]
    sources = [event["payload"]["source"] for event in receiver.pagerduty_events()]
    assert sources == ["billing", "wiki"]


def test_a_page_carries_its_figures_a_run_link_and_a_bounded_summary(receiver):
    notifier(load_settings()).send(
        Alert(
            "checksum_mismatch",
            "fatal",
            "x" * 3000,
            {"partition": "2026-03-10", "run_id": "abc123"},
            details={"size_bytes": 1234},
        )
    )

    (event,) = receiver.pagerduty_events()
    assert_events_v2(event)
    payload = event["payload"]
    assert len(payload["summary"]) == 1024
    assert payload["component"] == "restore_proof"
    assert payload["custom_details"]["size_bytes"] == 1234
    assert payload["custom_details"]["partition"] == "2026-03-10"
    assert event["links"] == [
        {"href": "https://dagster.internal/runs/abc123", "text": "Dagster run"}
    ]


def test_warnings_page_only_when_pagerduty_warnings_is_true(receiver, monkeypatch):
    warning = Alert("success_rate_low", "warning", "30-day success rate is 90.0%")
    notifier(load_settings()).send(warning)
    assert receiver.pagerduty_events() == []
    assert len(receiver.posts("/hook")) == 1  # the webhook still had it

    monkeypatch.setenv("PAGERDUTY_WARNINGS", "true")
    notifier(load_settings()).send(warning)
    (event,) = receiver.pagerduty_events()
    assert event["payload"]["severity"] == "warning"


def test_pitr_archiving_pages_and_its_end_resolves_every_kind_the_episode_had(receiver):
    send = notifier(load_settings()).send
    alerts, cursor = archive_alert_step([("pitr_archive_lag", "lag 20 min")], None)
    alerts2, cursor = archive_alert_step(
        [("pitr_archive_lag", "lag 25 min"), ("pitr_archive_failing", "failing")], cursor
    )
    alerts3, cursor = archive_alert_step([("pitr_archive_failing", "failing")], cursor)
    alerts4, cursor = archive_alert_step([], cursor)  # the lag ended a tick before the failure
    for alert in (*alerts, *alerts2, *alerts3, *alerts4):
        send(alert)

    actions = [(e["event_action"], e["dedup_key"]) for e in receiver.pagerduty_events()]
    assert actions == [
        ("trigger", "pgvault/test/default/pitr_archive_lag"),
        ("trigger", "pgvault/test/default/pitr_archive_failing"),
        ("resolve", "pgvault/test/default/pitr_archive_failing"),
        ("resolve", "pgvault/test/default/pitr_archive_lag"),
    ]
    alerts5, _ = archive_alert_step([("pitr_archive_gap", "gap")], cursor)
    assert [a.kind for a in alerts5] == ["pitr_archive_gap"]  # a new episode starts afresh


def test_a_500_is_retried_then_reported_to_the_other_sinks(receiver, caplog):
    receiver.statuses.extend([500] * 10)
    notifier(load_settings()).send(Alert("backup_stale", "fatal", "no backup for 40 h"))

    assert len(receiver.pagerduty_events()) == PAGE_ATTEMPTS
    first, post = receiver.posts("/hook")
    assert first["alert"] == "backup_stale"
    assert post["alert"] == "pagerduty_failed"
    assert "backup_stale" in post["text"] and "HTTP 500" in post["text"]
    assert "PagerDuty did not accept the backup_stale alert (HTTP 500)" in caplog.text


def test_a_429_is_retried_and_the_page_then_lands(receiver):
    receiver.statuses.extend([429, 503])
    notifier(load_settings()).send(Alert("backup_failed", "fatal", "failed"))

    events = receiver.pagerduty_events()
    assert len(events) == 3
    assert [post["alert"] for post in receiver.posts("/hook")] == ["backup_failed"]


def test_no_secret_appears_in_any_page(receiver, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    settings = load_settings()
    notifier(settings).send(
        Alert(
            "backup_failed",
            "fatal",
            f"cannot connect to {settings.database_url.secret}; password={DB_PASSWORD} "
            f"key {ROUTING_KEY} secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            {"url": settings.database_url.secret},
        )
    )

    (event,) = receiver.pagerduty_events()
    without_auth = {key: value for key, value in event.items() if key != "routing_key"}
    for secret in (DB_PASSWORD, ROUTING_KEY, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"):
        assert secret not in str(without_auth)
    assert "[redacted]" in event["payload"]["summary"]


def test_without_a_routing_key_nothing_is_paged(receiver, monkeypatch):
    monkeypatch.delenv("PAGERDUTY_ROUTING_KEY")
    made = Notifier.from_settings(load_settings())
    made.send(Alert("backup_stale", "fatal", "no backup"))
    assert made.pagerduty is None
    assert receiver.pagerduty_events() == []


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("PAGERDUTY_ROUTING_KEY", "has spaces in it", "PAGERDUTY_ROUTING_KEY is not a routing key"),
        ("PAGERDUTY_WARNINGS", "maybe", "PAGERDUTY_WARNINGS must be true or false"),
        ("PAGERDUTY_EVENTS_URL", "http://127.0.0.1:80", "PAGERDUTY_EVENTS_URL must be an https"),
    ],
)
def test_a_bad_pagerduty_setting_is_refused_naming_it(
    variable, value, says, local_env, monkeypatch
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=says) as raised:
        load_settings()
    if variable == "PAGERDUTY_ROUTING_KEY":
        assert value not in str(raised.value)


def test_alerts_test_sends_each_severity_to_every_sink_and_resolves_them(receiver, capsys):
    assert main(["alerts", "test", "--resolve"]) == 0

    out = capsys.readouterr().out
    assert "sent test_fatal to webhook, PagerDuty" in out
    events = [(e["event_action"], e["dedup_key"]) for e in receiver.pagerduty_events()]
    assert events[:2] == [
        ("trigger", "pgvault/test/default/test_fatal"),
        ("trigger", "pgvault/test/default/test_error"),
    ]
    resolved = {key for action, key in events[2:] if action == "resolve"}
    assert {"pgvault/test/default/test_fatal", "pgvault/test/default/test_error"} <= resolved
    levels = [post["level"] for post in receiver.posts("/hook")]
    assert levels == ["fatal", "error", "warning", "info", "info"]


def test_alerts_test_says_in_one_line_when_no_sink_is_configured(local_env, capsys):
    assert main(["alerts", "test"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: no alert sink is configured; set SENTRY_DSN")


def test_alerts_test_fails_when_pagerduty_refuses(receiver, capsys):
    receiver.statuses.extend([500] * PAGE_ATTEMPTS)  # the first page only
    assert main(["alerts", "test"]) == 2
    *warnings, line = capsys.readouterr().err.strip().splitlines()
    assert warnings == ["warning: PagerDuty did not accept the test_fatal alert (HTTP 500)"]
    assert "1 deliveries failed (PagerDuty did not accept the test_fatal alert (HTTP 500))" in line


def test_a_failed_restore_proof_pages_and_a_failed_size_check_does_not(receiver):
    send = notifier(load_settings()).send
    for check in (RESTORABLE, SIZE_NOT_SHRUNK):  # both WARN checks, leaving their run green
        evaluation = AssetCheckEvaluation(
            BACKUP_KEY, check, passed=False, severity=AssetCheckSeverity.WARN
        )
        alert = failed_check_alert(evaluation, "2026-03-10")
        assert alert is not None
        send(alert)

    (event,) = receiver.pagerduty_events()
    assert event["dedup_key"] == "pgvault/test/default/restorable"
    assert event["payload"]["severity"] == "error"
    assert event["payload"]["component"] == "restore_proof"


def test_a_drill_over_its_objective_pages_with_its_figures(receiver):
    report = DrillReport(
        environment="test",
        started_at=datetime(2026, 4, 6, 4, 0, tzinfo=UTC),
        backup_date=datetime(2026, 3, 1).date(),
        backup_choice="the monthly backup of 2026-03-01",
        sha256="0" * 64,
        recovery_time_objective_seconds=3600.0,
        stage_seconds={"verify": 1000.0, "restore": 4000.0},
    )
    notifier(load_settings()).send(drill_alert(report, "run-7"))

    (event,) = receiver.pagerduty_events()
    assert event["dedup_key"] == "pgvault/test/default/drill_over_objective"
    payload = event["payload"]
    assert (payload["severity"], payload["component"]) == ("critical", "drill")
    assert payload["custom_details"]["scaled_recovery_seconds"] == 5000.0
    assert payload["custom_details"]["recovery_time_objective_seconds"] == 3600.0
    assert event["links"][0]["href"] == "https://dagster.internal/runs/run-7"


def test_a_fleet_databases_resolved_notice_resolves_its_own_incident(receiver):
    """The fleet sensor re-addresses each alert to its database: the resolve must survive it."""
    channels = Channels(VaultResource(), AlertsResource())
    backed_up = datetime(2026, 3, 10, 2, 30, tzinfo=UTC)
    stale, _ = staleness_step(backed_up, None, backed_up + timedelta(hours=40))
    resolved, _ = staleness_step(backed_up, "stale", backed_up + timedelta(hours=1))
    for alert in (stale, resolved):
        assert alert is not None
        channels.send("billing", alert)

    actions = [(e["event_action"], e["dedup_key"]) for e in receiver.pagerduty_events()]
    assert actions == [
        ("trigger", "pgvault/test/billing/backup_stale"),
        ("resolve", "pgvault/test/billing/backup_stale"),
    ]


@pytest.mark.parametrize(
    "change",
    [
        {"event_action": "fire"},
        {"payload": {"summary": "x" * 1025, "source": "db", "severity": "critical"}},
        {"payload": {"summary": "s", "source": "db", "severity": "fatal"}},
        {"payload": {"summary": "s", "severity": "critical"}},
        {"routing_key": None},
    ],
)
def test_the_events_v2_schema_refuses_what_pagerduty_would(change):
    """The schema every sent event is held to is not vacuous."""
    event = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": "pgvault/test/default/backup_stale",
        "payload": {"summary": "s", "source": "db", "severity": "critical"},
    }
    EVENTS_V2.validate(event)
    with pytest.raises(jsonschema.ValidationError):
        EVENTS_V2.validate({**event, **change})
