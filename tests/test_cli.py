"""The pgvault command: the manual's procedures, and one clear line for every bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from pgvault_assets.cli import main
from pgvault_assets.engine.basics.names import object_key
from tests.test_engine.helpers import DAY, back_up

PGVAULT = Path(sys.executable).with_name("pgvault")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_exit(capsys, *argv: str) -> tuple[int, str, str]:
    """For argparse errors, which exit through SystemExit."""
    with pytest.raises(SystemExit) as caught:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(caught.value.code), out, err


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_help_shows_examples():
    result = subprocess.run([PGVAULT, "--help"], capture_output=True, text=True, check=True)
    assert "restore-from-backup --date" in result.stdout
    assert "list-backups" in result.stdout


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["verify-backup", "--date", "2025-13-01"], "not a date"),
        (["verify-backup"], "--date"),
        (["restore-from-backup", "--date", "2025-01-01", "--target", "prod"], "invalid choice"),
        (["list-backups", "--days", "-3"], "at least 1"),
        (["no-such-command"], "invalid choice"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2(capsys, local_env, argv, needle):
    code, _, err = run_exit(capsys, *argv)
    assert code == 2
    assert needle in one_line(err)


def test_missing_staging_url_is_named(capsys, local_env):
    code, _, err = run(
        capsys, "restore-from-backup", "--date", DAY.isoformat(), "--target", "staging"
    )
    assert code == 2
    assert "STAGING_DATABASE_URL" in one_line(err)


def test_bad_environment_value_is_refused_before_anything_runs(capsys, local_env, monkeypatch):
    monkeypatch.setenv("BACKUP_RETENTION_DAYS_DAILY", "a month")
    code, _, err = run(capsys, "list-backups")
    assert code == 2
    assert "BACKUP_RETENTION_DAYS_DAILY" in one_line(err)


def test_list_backups_json_has_the_documented_fields(capsys, local_env, awkward_database):
    manifest = back_up(awkward_database)
    code, out, _ = run(capsys, "list-backups", "--json")
    rows = json.loads(out)
    assert code == 0
    assert rows[0]["date"] == DAY.isoformat()
    assert rows[0]["key"] == manifest.object_key
    assert rows[0]["size_bytes"] == manifest.size_bytes
    assert rows[0]["sha256"] == manifest.sha256
    assert rows[0]["tier"] in ("daily", "weekly", "monthly")
    assert rows[0]["created_at"]


def test_list_backups_table_shows_the_backup(capsys, local_env, awkward_database):
    manifest = back_up(awkward_database)
    code, out, _ = run(capsys, "list-backups", "--days", "7")
    assert code == 0
    assert DAY.isoformat() in out and manifest.sha256[:12] in out


def test_tampered_backup_fails_verify_in_one_line(capsys, local_env, awkward_database):
    back_up(awkward_database)
    path = local_env / "store" / object_key("test", DAY)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    code, _, err = run(capsys, "verify-backup", "--date", DAY.isoformat())
    assert code == 1
    assert "do not restore" in one_line(err)


def _says_kept_for_72_hours(out: str, label: str) -> None:
    """The output names the kept database and the time the maintenance drops it after."""
    match = re.search(rf"kept as (\S+_{label}_(\d{{14}})) until (.+) UTC", " ".join(out.split()))
    assert match, out
    stamp = datetime.strptime(match.group(2), "%Y%m%d%H%M%S")
    assert match.group(3).startswith(f"{stamp + timedelta(hours=72):%Y-%m-%d %H:%M}")


def test_restore_to_staging_check_and_roll_back(
    capsys, local_env, awkward_database, make_database, monkeypatch
):
    back_up(awkward_database)
    staging = make_database("staging")
    with psycopg.connect(staging, autocommit=True) as conn:
        conn.execute("CREATE TABLE before_restore (id int)")
    monkeypatch.setenv("STAGING_DATABASE_URL", staging)

    code, out, err = run(
        capsys, "restore-from-backup", "--date", DAY.isoformat(), "--target", "staging", "--verify"
    )
    assert code == 0, err
    assert "rollback-restore --target staging" in out
    _says_kept_for_72_hours(out, "pre_restore")
    assert code == 0, err
    assert "FAIL" not in out

    code, out, err = run(capsys, "rollback-restore", "--target", "staging")
    assert code == 0, err
    _says_kept_for_72_hours(out, "rolled_back")
    with psycopg.connect(staging) as conn:
        assert conn.execute("SELECT to_regclass('before_restore') IS NOT NULL").fetchone() == (
            True,
        )


def test_integrity_failure_exits_1(capsys, local_env, awkward_database, monkeypatch):
    back_up(awkward_database)
    with psycopg.connect(awkward_database, autocommit=True) as conn:
        conn.execute("DELETE FROM public.notes")
    monkeypatch.setenv("DATABASE_URL", awkward_database)
    code, out, err = run(capsys, "check-database-integrity", "--database", "production")
    assert code == 1
    assert "row counts" in err and "public.notes" in out


def test_no_secret_reaches_the_terminal(capsys, local_env, awkward_database, monkeypatch):
    name = awkward_database.rsplit("/", 1)[1]
    monkeypatch.setenv(
        "DATABASE_URL", f"postgresql://postgres:hunter2-secret@127.0.0.1:5432/{name}"
    )
    monkeypatch.setenv(
        "STAGING_DATABASE_URL", "postgresql://postgres:hunter2-secret@127.0.0.1:1/nowhere"
    )
    back_up(awkward_database)
    outputs = []
    for argv in (
        ["list-backups"],
        ["verify-backup", "--date", DAY.isoformat()],
        ["check-database-integrity", "--database", "production"],
        ["restore-from-backup", "--date", DAY.isoformat(), "--target", "staging"],
    ):
        _, out, err = run(capsys, *argv)
        outputs.append(out + err)
    assert "cannot connect" in outputs[-1]
    assert not any("hunter2" in text for text in outputs)
