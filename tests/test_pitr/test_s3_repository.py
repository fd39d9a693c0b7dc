"""The S3 repository (moto behind TLS): recovery to a time, and a dead endpoint."""

from __future__ import annotations

import os

import psycopg
import pytest

from pgvault_assets.engine.basics import names
from pgvault_assets.settings import load_settings
from tests.test_pitr.conftest import ArchivingServer, S3Repository, pgvault, wait_until
from tests.test_pitr.tls import silent_endpoint


def test_recovery_to_a_time_on_the_s3_repository_gets_exactly_the_rows_before_it(
    s3_repository: S3Repository, archiving_server: ArchivingServer
) -> None:
    server = archiving_server
    assert pgvault("pitr", "init") == 0
    server.enable_archiving()
    assert pgvault("pitr", "init") == 0
    assert pgvault("pitr", "backup", "--type", "full") == 0
    server.sql("CREATE TABLE orders (id int PRIMARY KEY)")
    server.sql("INSERT INTO orders SELECT generate_series(1, 3)")
    target = server.now()
    server.sql("INSERT INTO orders SELECT generate_series(4, 6)")
    server.switch_and_wait()

    assert pgvault("restore-to-time", "--time", target.isoformat(), "--target", "staging") == 0

    with psycopg.connect(os.environ["STAGING_DATABASE_URL"]) as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY id")] == [1, 2, 3]
    settings = load_settings()
    stored = s3_repository.aws.s3.list_objects_v2(
        Bucket=s3_repository.aws.bucket, Prefix=f"pgbackrest/{settings.environment}/archive/"
    )
    assert stored["KeyCount"] > 0
    config = names.pitr_stanza(settings).config_file.read_text()
    assert f"repo1-s3-kms-key-id={s3_repository.aws.kms_key_id}" in config
    assert "repo1-cipher-type=aes-256-cbc" in config


def test_a_dead_s3_endpoint_fails_archiving_within_the_bound_and_status_says_so(
    s3_repository: S3Repository,
    archiving_server: ArchivingServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = archiving_server
    monkeypatch.setenv("PITR_ARCHIVE_PUSH_TIMEOUT_SECONDS", "5")
    monkeypatch.setenv("PITR_IO_TIMEOUT_SECONDS", "2")
    assert pgvault("pitr", "init") == 0
    server.enable_archiving()
    with silent_endpoint() as port:
        monkeypatch.setenv("PITR_S3_ENDPOINT", f"localhost:{port}")
        capsys.readouterr()
        assert pgvault("pitr", "init") == 1  # the configuration is rewritten, the check fails
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        server.sql("CREATE TABLE t AS SELECT 1 AS x")
        server.sql("SELECT pg_switch_wal()")
        wait_until(
            lambda: server.sql("SELECT failed_count FROM pg_stat_archiver")[0][0] > 0,
            "archiving to the dead endpoint to fail",
        )
        log = (server.cluster.base / "log").read_text()
        assert "archive command failed" in log
        assert pgvault("pitr", "status") == 1
        out = capsys.readouterr().out
        assert "WAL archiving is failing" in out
        assert "the repository cannot be read" in out
