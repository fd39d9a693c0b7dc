"""Recovery to a chosen second on the local repository, and the times it must refuse."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.test_pitr.conftest import ArchivingServer, pgvault, wait_until


def staging_rows() -> list[int]:
    with psycopg.connect(os.environ["STAGING_DATABASE_URL"]) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM orders ORDER BY id")]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def restore_log(server: ArchivingServer) -> Path:
    """Where pgBackRest logs each restore it runs for the `test` stanza."""
    return server.pitr_dir / "log" / "test-restore.log"


def window_end(status_output: str) -> datetime:
    """The end of the recoverable window as `pgvault pitr status` prints it."""
    found = re.search(r"recoverable window: .+Z \.\. (\S+ \S+)Z", status_output)
    assert found, status_output
    return datetime.fromisoformat(found.group(1)).replace(tzinfo=UTC)


def test_recovery_to_a_time_gets_exactly_the_rows_committed_before_it(
    pitr_server: ArchivingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    pitr_server.sql("CREATE TABLE orders (id int PRIMARY KEY)")
    pitr_server.sql("INSERT INTO orders SELECT generate_series(1, 5)")
    target = pitr_server.now()
    pitr_server.sql("INSERT INTO orders SELECT generate_series(6, 10)")
    pitr_server.switch_and_wait()

    assert pgvault("restore-to-time", "--time", target.isoformat(), "--target", "staging") == 0

    assert staging_rows() == [1, 2, 3, 4, 5]
    assert "recovery stopped at" in capsys.readouterr().out


def test_every_time_status_shows_recovers_even_after_the_archives_last_commit(
    pitr_server: ArchivingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL stops at a time only at a later commit; after the last one, the state at
    the time is the archive's end, and that is what is recovered."""
    pitr_server.sql("CREATE TABLE orders (id int PRIMARY KEY)")
    pitr_server.sql("INSERT INTO orders SELECT generate_series(1, 5)")
    pitr_server.hold_still()
    last_commit = pitr_server.now()
    wait_until(
        lambda: pitr_server.now() >= last_commit + timedelta(seconds=2),
        "the server's clock two seconds past the last commit",
    )
    pitr_server.switch_and_wait()
    capsys.readouterr()
    pgvault("pitr", "status")
    end = window_end(capsys.readouterr().out)
    assert end > last_commit + timedelta(seconds=1)

    # Half a second before the window's end (a time target PostgreSQL never reaches), and
    # the end itself, as the operator typed it.
    for target in (end - timedelta(seconds=0.5), end):
        code = pgvault("restore-to-time", "--time", target.isoformat(), "--target", "staging")
        assert code == 0, capsys.readouterr().err
        assert staging_rows() == [1, 2, 3, 4, 5]
        assert "recovery stopped at" in capsys.readouterr().out
    assert restore_log(pitr_server).exists()


def test_a_time_past_the_window_is_refused_in_one_line_before_anything_is_restored(
    pitr_server: ArchivingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    staging = psycopg.connect(os.environ["STAGING_DATABASE_URL"], autocommit=True)
    with staging:
        staging.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        staging.execute("INSERT INTO orders VALUES (42)")
    pitr_server.sql("CREATE TABLE orders (id int PRIMARY KEY)")
    pitr_server.hold_still()
    pitr_server.switch_and_wait()
    capsys.readouterr()
    pgvault("pitr", "status")
    past_the_window = window_end(capsys.readouterr().out) + timedelta(microseconds=1)

    code = pgvault("restore-to-time", "--time", past_the_window.isoformat(), "--target", "staging")

    assert code != 0
    line = one_error_line(capsys)
    assert "past the end of the WAL archive" in line and "the recoverable window ends at" in line
    assert staging_rows() == [42]
    assert not restore_log(pitr_server).exists()


def test_a_time_before_the_first_base_backup_is_refused_in_one_line(
    pitr_server: ArchivingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    before = pitr_server.now() - timedelta(days=1)
    capsys.readouterr()

    assert pgvault("restore-to-time", "--time", before.isoformat(), "--target", "staging") != 0
    assert "before the recoverable window" in one_error_line(capsys)


@pytest.mark.parametrize(
    "argv",
    [
        ["restore-to-time", "--time", "yesterday", "--target", "staging"],
        ["restore-to-time", "--time", "2026-11-30T09:00:00", "--target", "staging"],
        ["restore-to-time", "--time", "2026-11-30T09:00:00Z", "--target", "elsewhere"],
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        pgvault(*argv)
    assert exited.value.code == 2
    assert one_error_line(capsys).startswith("error:")


def test_before_pitr_init_every_command_says_to_run_it(
    archiving_server: ArchivingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pgvault("pitr", "status") == 2
    assert "run pgvault pitr init" in one_error_line(capsys)
