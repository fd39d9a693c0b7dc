"""Setting up archiving, the archive's gaps, and WAL from another cluster."""

from __future__ import annotations

import pwd
import shutil
import stat
from pathlib import Path

import psycopg
import pytest

from pgvault_assets.engine.monitoring.doctor import Status, pitr_check
from pgvault_assets.engine.pitr.archive import pitr_status, tool_for
from pgvault_assets.engine.pitr.config import archive_command, server_settings_lines
from pgvault_assets.engine.pitr.passphrase import stored_passphrase
from pgvault_assets.engine.pitr.window import read_window
from pgvault_assets.engine.postgres.cluster import start_cluster
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.settings import load_settings
from tests.test_pitr.conftest import ArchivingServer, pgvault, wait_until


def repository_segments(pitr_dir: Path) -> list[Path]:
    return sorted((pitr_dir / "repo" / "archive").rglob("*-*.gz"))


def test_init_prints_the_lines_and_a_restart_then_checks_once_archiving_is_on(
    archiving_server: ArchivingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pgvault("pitr", "init") == 0
    first = capsys.readouterr().out
    for line in server_settings_lines(load_settings()):
        assert line in first
    assert "restart" in first
    config = archiving_server.pitr_dir / "pgbackrest.conf"
    passphrase = stored_passphrase(Vault.from_settings(load_settings()))

    archiving_server.enable_archiving()
    assert pgvault("pitr", "init") == 0
    assert "check passed" in capsys.readouterr().out
    assert pgvault("pitr", "init") == 0  # idempotent: the same stanza, the same passphrase
    assert stored_passphrase(Vault.from_settings(load_settings())) == passphrase
    assert f"repo1-cipher-pass={passphrase}" in config.read_text()


def test_init_refusing_an_unreachable_pitr_dir_writes_no_passphrase_there(
    archiving_server: ArchivingServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    closed = tmp_path / "pitr"  # pytest's temporary tree is closed to the postgres OS user
    monkeypatch.setenv("PITR_DIR", str(closed))

    assert pgvault("pitr", "init") == 2

    passphrase = stored_passphrase(Vault.from_settings(load_settings()))
    left = [path for path in closed.rglob("*") if path.is_file()]
    assert [path for path in left if passphrase.encode() in path.read_bytes()] == []
    assert not (closed / "pgbackrest.conf").exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"cannot read files in {closed}" in err and "set PITR_DIR" in err


def test_config_belongs_to_postgres_and_is_private(pitr_server: ArchivingServer) -> None:
    info = (pitr_server.pitr_dir / "pgbackrest.conf").stat()
    assert pwd.getpwuid(info.st_uid).pw_name == "postgres"
    assert stat.S_IMODE(info.st_mode) == 0o600


def test_status_shows_the_window_and_no_problem_when_archiving_is_healthy(
    pitr_server: ArchivingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    pitr_server.switch_and_wait()
    capsys.readouterr()
    assert pgvault("pitr", "status") == 0
    out = capsys.readouterr().out
    assert "recoverable window:" in out
    assert "problem" not in out
    assert pitr_check(load_settings()).status is Status.OK
    assert pgvault("list-backups") == 0
    assert "point-in-time window: " in capsys.readouterr().out


def test_a_deleted_wal_segment_is_detected_as_a_gap_and_recovery_past_it_refused(
    pitr_server: ArchivingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    pitr_server.sql("CREATE TABLE t (x int)")
    for _ in range(3):
        pitr_server.sql("INSERT INTO t VALUES (1)")
        pitr_server.switch_and_wait()
    pitr_server.sql("INSERT INTO t VALUES (1)")
    after = pitr_server.now()
    pitr_server.sql("INSERT INTO t VALUES (2)")
    pitr_server.switch_and_wait()
    settings = load_settings()
    assert read_window(tool_for(settings)).gaps == ()

    segments = repository_segments(pitr_server.pitr_dir)
    deleted = segments[-3]
    deleted.unlink()

    gaps = read_window(tool_for(settings)).gaps
    assert [(gap.missing, gap.after < deleted.name < gap.before) for gap in gaps] == [(1, True)]
    kinds = [kind for kind, _ in pitr_status(settings).problems(settings.pitr.max_lag)]
    assert kinds == ["pitr_archive_gap"]
    doctor = pitr_check(settings)
    assert doctor.status is Status.FAIL and "gap" in doctor.detail
    capsys.readouterr()
    assert pgvault("pitr", "status") == 1
    assert "the WAL archive has a gap: 1 WAL segment(s) missing" in capsys.readouterr().out
    assert pgvault("restore-to-time", "--time", after.isoformat(), "--target", "staging") == 1
    assert "gap" in capsys.readouterr().err


def test_wal_from_another_cluster_is_refused_by_the_stanza(
    pitr_server: ArchivingServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pitr_server.switch_and_wait()
    before = repository_segments(pitr_server.pitr_dir)
    config = pitr_server.pitr_dir / "pgbackrest.conf"
    first_config = config.read_text()
    with start_cluster() as other:

        def other_sql(query: str) -> list[tuple[object, ...]]:
            with psycopg.connect(other.url.secret, autocommit=True) as conn:
                cursor = conn.execute(query)
                return cursor.fetchall() if cursor.description else []

        # pgvault refuses to point the stanza at another cluster, and changes nothing ...
        monkeypatch.setenv("DATABASE_URL", other.url.secret)
        capsys.readouterr()
        assert pgvault("pitr", "init") == 2
        assert "archives another cluster" in capsys.readouterr().err
        assert config.read_text() == first_config

        # ... and pgBackRest refuses the other cluster's WAL even when configured by hand for it.
        other_config = pitr_server.pitr_dir / "other.conf"
        other_config.write_text(
            first_config.replace(str(pitr_server.cluster.data), str(other.data))
            .replace(f"pg1-port={pitr_server.cluster.port}", f"pg1-port={other.port}")
            .replace(f"socket-path={pitr_server.cluster.base}", f"socket-path={other.base}")
        )
        shutil.chown(other_config, "postgres", "postgres")
        command = archive_command(load_settings()).replace(str(config), str(other_config))
        other_sql("ALTER SYSTEM SET archive_mode = on")
        other_sql(f"ALTER SYSTEM SET archive_command = '{command}'")
        restarted = other.pg_ctl("-m", "fast", "-l", str(other.base / "log"), "-w", "restart")
        assert restarted.returncode == 0, restarted.stderr
        other_sql("CREATE TABLE t AS SELECT 1 AS x")
        other_sql("SELECT pg_switch_wal()")
        wait_until(
            lambda: other_sql("SELECT failed_count FROM pg_stat_archiver")[0][0] > 0,
            "the other cluster's archiving to fail",
        )
        assert other_sql("SELECT archived_count FROM pg_stat_archiver")[0][0] == 0
        refusal = (other.base / "log").read_text()
    assert repository_segments(pitr_server.pitr_dir) == before
    assert "system-id" in refusal, refusal
