"""The daily run's time limits follow the longest of the last seven backups, never below
the defaults."""

from __future__ import annotations

from datetime import date, timedelta

from test_defs.backup_history import fake_manifest

from pgvault_assets.engine.monitoring.run_budget import run_budget

HOUR = 3600.0


def _history(*hours: float) -> list:
    first = date(2025, 6, 1)
    return [
        fake_manifest("test", first + timedelta(days=n), duration_seconds=h * HOUR)
        for n, h in enumerate(hours)
    ]


def test_a_small_database_keeps_the_default_limits():
    budget = run_budget(_history(0.1, 0.2, 0.1))

    assert budget.max_runtime_seconds == 6 * 3600
    assert (budget.sentry_max_runtime_minutes, budget.sentry_checkin_margin_minutes) == (240, 30)


def test_long_backups_raise_the_limits_to_three_times_the_longest_recent():
    budget = run_budget(_history(1, 4, 2.5))

    assert budget.max_runtime_seconds == 3 * 4 * 3600
    assert budget.sentry_max_runtime_minutes == 3 * 4 * 60
    assert budget.sentry_checkin_margin_minutes == 4 * 60


def test_only_the_last_seven_backups_count():
    budget = run_budget(_history(10, 1, 1, 1, 1, 1, 1, 3))

    assert budget.max_runtime_seconds == 3 * 3 * 3600  # the 10 h one is eight backups ago
    assert budget.sentry_max_runtime_minutes == 3 * 3 * 60


def test_no_backups_yet_means_the_defaults():
    assert run_budget([]).max_runtime_seconds == 6 * 3600
