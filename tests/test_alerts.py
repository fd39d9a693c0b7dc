"""Alerts as Sentry and a webhook receive them: levels, tags, fingerprints, check-ins, no secrets."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import sentry_sdk
from test_defs.http_capture import Captured, capture_http

from pgvault_assets.alerts import Alert, Notifier, monitor_slug
from pgvault_assets.settings import load_settings

DB_PASSWORD = "s3cret-db-pass"


@pytest.fixture
def ingest(local_env, monkeypatch) -> Iterator[Captured]:
    with capture_http() as captured:
        monkeypatch.setenv("SENTRY_DSN", captured.sentry_dsn)
        monkeypatch.setenv("ALERT_WEBHOOK_URL", captured.url)
        monkeypatch.setenv("DATABASE_URL", f"postgresql://app:{DB_PASSWORD}@db.internal:5432/app")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        yield captured
    sentry_sdk.init()


def test_an_alert_reaches_sentry_with_level_tags_and_a_fingerprint_per_kind(ingest):
    notifier = Notifier.from_settings(load_settings())
    notifier.send(Alert("checksum_mismatch", "fatal", "backup 2025-06-01 failed its SHA-256 check"))
    notifier.send(Alert("backup_stale", "error", "no backup for 40 h"))

    first, second = ingest.events()
    assert first["level"] == "fatal"
    assert first["tags"]["alert"] == "checksum_mismatch"
    assert first["tags"]["environment"] == "test"
    assert first["fingerprint"] == ["pgvault", "test", "checksum_mismatch"]
    assert second["fingerprint"] == ["pgvault", "test", "backup_stale"]


def test_an_alert_reaches_the_webhook_as_slack_text(ingest):
    Notifier.from_settings(load_settings()).send(
        Alert("success_rate_low", "warning", "30-day success rate is 90.0%")
    )

    (post,) = ingest.posts("/hook")
    assert post["text"].startswith(":warning: [test] WARNING success_rate_low")
    assert post["alert"] == "success_rate_low"


def test_no_webhook_is_called_when_alert_webhook_url_is_unset(ingest, monkeypatch):
    monkeypatch.delenv("ALERT_WEBHOOK_URL")
    Notifier.from_settings(load_settings()).send(Alert("backup_failed", "error", "failed"))
    assert ingest.posts("/hook") == []
    assert len(ingest.events()) == 1


def test_a_failing_webhook_does_not_stop_the_sentry_alert(ingest, monkeypatch):
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "http://127.0.0.1:9/unreachable")
    Notifier.from_settings(load_settings()).send(Alert("backup_failed", "error", "failed"))
    assert len(ingest.events()) == 1


def test_secrets_are_scrubbed_from_every_event(ingest):
    settings = load_settings()
    notifier = Notifier.from_settings(settings)
    notifier.send(
        Alert(
            "backup_failed",
            "error",
            f"cannot connect to {settings.database_url.secret}; password={DB_PASSWORD} "
            "key AKIAIOSFODNN7EXAMPLE secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY "
            f"dsn {ingest.sentry_dsn} other postgresql://u:hunter22@h/db",
        )
    )
    try:
        raise RuntimeError(f"boom {settings.database_url.secret}")
    except RuntimeError:
        sentry_sdk.capture_exception()
    sentry_sdk.flush(5)

    raw = b"".join(body for _, body in ingest.requests).decode()
    for secret in (
        DB_PASSWORD,
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ingest.sentry_dsn,
        "hunter22",
    ):
        assert secret not in raw
    assert len(ingest.events()) == 2
    assert "[redacted]" in ingest.events()[0]["message"] or "[redacted]" in str(ingest.events()[0])


def test_backup_runs_send_cron_check_ins_for_the_environments_monitor(ingest):
    notifier = Notifier.from_settings(load_settings())
    check_in_id = notifier.checkin("in_progress")
    notifier.checkin("ok", check_in_id=check_in_id, duration_seconds=12.5)

    started, finished = ingest.checkins()
    assert started["monitor_slug"] == monitor_slug("test") == "pgvault-backup-test"
    assert started["status"] == "in_progress"
    assert started["monitor_config"]["schedule"] == {"type": "crontab", "value": "0 2 * * *"}
    assert started["monitor_config"]["timezone"] == "UTC"
    assert (finished["status"], finished["duration"]) == ("ok", 12.5)
    assert finished["check_in_id"] == started["check_in_id"]


def test_without_a_dsn_nothing_is_sent_and_check_ins_are_skipped(ingest, monkeypatch):
    monkeypatch.delenv("SENTRY_DSN")
    monkeypatch.delenv("ALERT_WEBHOOK_URL")
    sentry_sdk.init()
    notifier = Notifier.from_settings(load_settings())
    notifier.send(Alert("backup_failed", "error", "failed"))
    assert notifier.checkin("in_progress") is None
    assert ingest.requests == []


def test_a_fleet_databases_alerts_and_check_ins_are_its_own(ingest):
    """Two databases failing alike are two Sentry issues, and each has its own cron monitor at
    its own hour: one database's missed backup is not hidden by another's check-in."""
    settings = load_settings()
    billing = Notifier.from_settings(
        dataclasses.replace(settings, database="billing", backup_hour=5)
    )
    wiki = Notifier.from_settings(dataclasses.replace(settings, database="wiki"))
    billing.send(Alert("backup_failed", "fatal", "backup of 2026-03-14 failed"))
    wiki.send(Alert("backup_failed", "fatal", "backup of 2026-03-14 failed"))
    billing.checkin("in_progress")

    first, second = ingest.events()
    assert first["fingerprint"] == ["pgvault", "test", "backup_failed", "billing"]
    assert second["fingerprint"] == ["pgvault", "test", "backup_failed", "wiki"]
    assert (first["tags"]["database"], second["tags"]["database"]) == ("billing", "wiki")
    first_post, _ = ingest.posts("/hook")
    assert first_post["text"].startswith(":rotating_light: [test/billing] FATAL backup_failed")
    assert first_post["database"] == "billing"
    (started,) = ingest.checkins()
    assert started["monitor_slug"] == "pgvault-backup-test-billing"
    assert started["monitor_config"]["schedule"] == {"type": "crontab", "value": "0 5 * * *"}
