"""Production recovered to a time: only under two approvals pinned to the time and base
backup, only after staging holds that same recovery, and only once."""

from __future__ import annotations

import psycopg
import pytest

from tests.test_pitr.conftest import ArchivingServer, pgvault


def rows(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM orders ORDER BY id")]


def request(time: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = pgvault(
        "request-restore",
        "--kind",
        "restore-to-time",
        "--time",
        time,
        "--target",
        "production",
        "--reason",
        "orders deleted at 09:16",
    )
    captured = capsys.readouterr()
    return code, (captured.out.splitlines() or [""])[0] if code == 0 else captured.err


def test_production_recovers_to_the_approved_time_once_after_staging(
    pitr_server: ArchivingServer, approvers, capsys: pytest.CaptureFixture[str]
) -> None:
    pitr_server.sql("CREATE TABLE orders (id int PRIMARY KEY)")
    pitr_server.sql("INSERT INTO orders SELECT generate_series(1, 5)")
    target = pitr_server.now().isoformat()
    pitr_server.sql("INSERT INTO orders SELECT generate_series(6, 10)")
    pitr_server.switch_and_wait()

    code, refusal = request(target, capsys)
    assert code == 1 and "staging does not hold a recovery" in refusal

    assert pgvault("restore-to-time", "--time", target, "--target", "staging") == 0
    code, request_id = request(target, capsys)
    assert code == 0, request_id
    for key in (approvers.alice, approvers.bob):
        assert pgvault("approve-restore", request_id, "--key", str(key)) == 0

    production = ("restore-to-time", "--target", "production", "--skip-confirmation")
    capsys.readouterr()
    other_time = pitr_server.now().isoformat()
    assert pgvault(*production, "--time", other_time, "--request", request_id) == 1
    assert "approved recovering to" in capsys.readouterr().err
    assert rows(pitr_server.app_url) == list(range(1, 11))

    assert pgvault(*production, "--time", target, "--request", request_id) == 0
    assert rows(pitr_server.app_url) == [1, 2, 3, 4, 5]

    capsys.readouterr()
    assert pgvault(*production, "--time", target, "--request", request_id) == 1
    assert "already executed" in capsys.readouterr().err


def test_production_without_a_request_is_refused_in_one_line(
    archiving_server: ArchivingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = pgvault("restore-to-time", "--time", "2026-11-30T09:00:00Z", "--target", "production")
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "approved request" in err
