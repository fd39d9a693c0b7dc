"""Health figures, warning rules and the weekly report against a known history."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from test_defs.backup_history import fake_manifest

from pgvault_assets.engine.monitoring.report import (
    FailedRun,
    duration_exceeds_average,
    health_figures,
    health_warnings,
    render_weekly_report,
    size_shrank,
)

TODAY = date(2025, 6, 30)


def history() -> tuple[list, list[FailedRun]]:
    """30 days before TODAY: 28 backups (60 s, 1000 B each, the last 7 take 120 s), 2 failures."""
    manifests = []
    failures = []
    for n in range(1, 31):
        day = TODAY - timedelta(days=n)
        if n in (3, 20):
            failures.append(FailedRun(day, "pg_dump failed (connection refused)"))
            continue
        manifests.append(fake_manifest("test", day, duration_seconds=120.0 if n <= 7 else 60.0))
    manifests.append(fake_manifest("test", TODAY - timedelta(days=200)))  # outside both windows
    return manifests, failures


def test_figures_count_backups_failures_rate_duration_and_storage():
    manifests, failures = history()
    month = health_figures(manifests, failures, today=TODAY, window_days=30)
    week = health_figures(manifests, failures, today=TODAY, window_days=7)

    assert (month.backups_created, month.failure_count) == (28, 2)
    assert month.success_rate == 28 / 30
    assert month.average_duration_seconds == (6 * 120 + 22 * 60) / 28
    assert month.storage_used_bytes == 29 * 1000
    assert month.last_success_day == TODAY - timedelta(days=1)
    assert (week.backups_created, week.failure_count) == (6, 1)
    assert week.average_duration_seconds == 120.0
    assert week.success_rate == 6 / 7


def test_a_window_with_no_runs_has_no_success_rate_rather_than_zero():
    figures = health_figures([], [], today=TODAY)
    assert figures.success_rate is None and figures.last_success_at is None
    assert health_warnings(figures, storage_budget_bytes=None) == []


def test_success_rate_under_95_percent_and_storage_over_budget_warn():
    manifests, failures = history()
    month = health_figures(manifests, failures, today=TODAY)

    kinds = [kind for kind, _ in health_warnings(month, storage_budget_bytes=10_000)]

    assert kinds == ["success_rate_low", "storage_over_budget"]
    assert health_warnings(month, storage_budget_bytes=None)[0][1].startswith("30-day")


def test_healthy_figures_raise_no_warning():
    manifests = [fake_manifest("test", TODAY - timedelta(days=n)) for n in range(1, 31)]
    month = health_figures(manifests, [], today=TODAY)
    assert health_warnings(month, storage_budget_bytes=10**9) == []


def test_a_backup_slower_than_twice_the_30_day_average_is_flagged():
    previous = [fake_manifest("test", TODAY - timedelta(days=n)) for n in range(1, 31)]
    slow = fake_manifest("test", TODAY, duration_seconds=121)
    usual = fake_manifest("test", TODAY, duration_seconds=119)

    assert duration_exceeds_average(slow, previous) == (True, 60.0)
    assert duration_exceeds_average(usual, previous) == (False, 60.0)
    assert duration_exceeds_average(slow, []) == (False, None)


def test_a_dump_less_than_half_the_previous_one_is_flagged():
    previous = [fake_manifest("test", TODAY - timedelta(days=1), dump_size_bytes=10_000)]
    shrunk = fake_manifest("test", TODAY, dump_size_bytes=4_999)
    steady = fake_manifest("test", TODAY, dump_size_bytes=5_000)

    assert size_shrank(shrunk, previous)[0] is True
    assert size_shrank(steady, previous)[0] is False


def test_weekly_report_renders_the_table_and_the_failures_with_reasons():
    manifests, failures = history()
    text = render_weekly_report(
        "production",
        health_figures(manifests, failures, today=TODAY, window_days=7),
        health_figures(manifests, failures, today=TODAY, window_days=30),
        generated_at=datetime(2025, 6, 30, 4, 0, tzinfo=UTC),
    )

    assert "| backups created | 6 | 28 |" in text
    assert "| success rate | 85.7% | 93.3% |" in text
    assert "| storage used | 28.3 KiB | 28.3 KiB |" in text
    assert "| 2025-06-27 | pg_dump failed (connection refused) |" in text
    assert "| 2025-06-10 | pg_dump failed (connection refused) |" in text
