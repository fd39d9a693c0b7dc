"""The quarterly drill restores last month's backup, checks it, times it against the RTO, cleans up."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest

from pgvault_assets.engine.recovery.drill import DrillReport, choose_backup, run_drill, store_report
from pgvault_assets.errors import BackupNotFound
from pgvault_assets.settings import DatabaseUrl
from tests.test_engine.helpers import back_up, vault
from tests.test_recovery.conftest import databases_named
from tests.test_recovery.helpers import run

# The first Monday of 2026's first quarter; December's 1st was missed, November's was taken.
DRILL_TIME = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
QUARTER = (date(2025, 11, 1), date(2025, 12, 2), date(2025, 12, 20), date(2026, 1, 1))


@pytest.fixture
def quarter(local_env, awkward_database) -> DatabaseUrl:
    for day in QUARTER:
        back_up(awkward_database, day=day)
    return DatabaseUrl(awkward_database)


def drill(url: DatabaseUrl, **options) -> DrillReport:
    return run_drill(vault(), url, production_url=url, now=lambda: DRILL_TIME, **options)


def test_the_first_of_the_previous_month_is_drilled_when_it_exists():
    days = [date(2025, 11, 30), date(2025, 12, 1), date(2025, 12, 2), date(2026, 1, 1)]

    assert choose_backup(days, date(2026, 1, 5))[0] == date(2025, 12, 1)


def test_without_the_first_the_earliest_backup_of_that_month_is_drilled_and_said():
    day, why = choose_backup(
        [date(2025, 11, 1), date(2025, 12, 9), date(2025, 12, 3)], date(2026, 1, 5)
    )

    assert day == date(2025, 12, 3)
    assert "no backup of 2025-12-01" in why


def test_a_month_without_backups_is_refused():
    with pytest.raises(BackupNotFound, match="December 2025"):
        choose_backup([date(2025, 11, 1), date(2026, 1, 1)], date(2026, 1, 5))


def test_drill_restores_last_months_backup_checks_it_and_stores_its_report(quarter, scratch_made):
    report = drill(quarter)
    key = store_report(vault(), report)

    assert report.passed, report.findings()
    assert report.backup_date == date(2025, 12, 2)
    assert list(report.stage_seconds) == ["verify", "restore", "integrity", "queries"]
    assert all(c.passed for c in report.checks)
    assert "row counts" in [c.name for c in report.checks if not c.skipped]
    assert len(report.queries) == 6 and all(q.passed for q in report.queries)
    assert 0.5 < report.scale < 2
    (scratch,) = scratch_made
    assert scratch.startswith("pgvault_scratch_drill_") and databases_named(scratch) == []
    stored = vault().store.get_bytes(key).decode()
    assert "**Result: PASSED**" in stored
    assert "no backup of 2025-12-01" in stored


def test_drill_fails_when_the_scaled_time_misses_a_tiny_objective(quarter, scratch_made):
    report = drill(quarter, recovery_time_objective=timedelta(milliseconds=1))

    assert not report.passed
    assert not report.meets_objective
    assert "MISSES the" in report.to_markdown()
    (scratch,) = scratch_made
    assert scratch.startswith("pgvault_scratch_drill_") and databases_named(scratch) == []


def test_drill_fails_when_a_stage_is_slow(quarter):
    three_hours_per_reading = itertools.count(step=3 * 3600).__next__

    report = drill(quarter, timer=three_hours_per_reading)

    assert report.stage_seconds == {
        s: 3 * 3600 for s in ("verify", "restore", "integrity", "queries")
    }
    assert not report.meets_objective and not report.passed


def test_a_failing_sample_query_fails_the_drill(quarter, tmp_path):
    queries = tmp_path / "drill.sql"
    queries.write_text(
        "-- sample queries\nSELECT count(*) FROM public.users;\nSELECT * FROM public.missing;\n"
    )

    report = drill(quarter, queries_file=queries)

    assert [q.passed for q in report.queries] == [True, False]
    assert not report.passed
    assert any("public.missing" in finding for finding in report.findings())


def test_a_damaged_backup_fails_the_drill_with_its_reason_and_leaves_no_database(
    quarter, local_env, scratch_made
):
    damaged = local_env / "store" / "test" / "2025-12-02" / "db_backup.sql.gz.enc"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))

    report = drill(quarter)

    assert not report.passed
    assert "SHA-256" in (report.failure or "")
    assert scratch_made == []  # refused before any database was made


def test_recovery_time_is_scaled_to_the_production_size():
    report = DrillReport(
        environment="test",
        started_at=DRILL_TIME,
        backup_date=date(2025, 12, 1),
        backup_choice="",
        sha256="0" * 64,
        recovery_time_objective_seconds=4 * 3600,
        stage_seconds={"restore": 20.0},
        drill_database_bytes=1 << 20,
        production_database_bytes=1000 << 20,
    )

    assert report.scaled_seconds == 20_000
    assert not report.meets_objective


def test_cli_drill_exits_1_when_the_objective_is_missed(
    local_env, awkward_database, monkeypatch, capsys
):
    monkeypatch.setenv("DATABASE_URL", awkward_database)
    monkeypatch.setenv("STAGING_DATABASE_URL", awkward_database)
    last_month = (datetime.now(UTC).date().replace(day=1) - timedelta(days=1)).replace(day=1)
    back_up(awkward_database, day=last_month)

    assert run(capsys, "drill")[0] == 0
    code, out, _ = run(capsys, "drill", "--rto-hours", "0.000001")

    assert code == 1
    assert "**Result: FAILED**" in out
    assert len(vault().store.list("test/drills/")) == 4
