"""Fixtures for the Dagster layer: a database to back up, alert capture, a test instance."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest
import sentry_sdk
from dagster import DagsterInstance, instance_for_test

from pgvault_assets.engine.clock import latest_complete_day, utcnow
from test_defs.http_capture import Captured, capture_http
from tests.test_recovery.conftest import approvers, databases  # noqa: F401 (shared fixtures)


@pytest.fixture
def backup_env(local_env, awkward_database, monkeypatch) -> str:
    """pgvault on its embedded store, backing up the awkward database; returns its URL."""
    monkeypatch.setenv("DATABASE_URL", awkward_database)
    return awkward_database


@pytest.fixture
def alerts_captured(monkeypatch) -> Iterator[Captured]:
    """Sentry and the webhook both pointed at a local server that records what arrives."""
    with capture_http() as captured:
        monkeypatch.setenv("SENTRY_DSN", captured.sentry_dsn)
        monkeypatch.setenv("ALERT_WEBHOOK_URL", captured.url)
        yield captured
    sentry_sdk.init()


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def yesterday() -> date:
    return latest_complete_day(utcnow())
