"""A private cluster that archives WAL through pgvault's pgBackRest setup.

archive_mode takes effect only at a server start, so every test here has a cluster of its
own (never the shared 5432 server); its pgBackRest folder is one the postgres OS user can
reach, outside pytest's root-only temporary tree.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from pgvault_assets.cli import main
from pgvault_assets.engine.pitr.config import server_settings_lines
from pgvault_assets.engine.postgres.cluster import Cluster, start_cluster
from pgvault_assets.settings import Settings, load_settings
from tests.conftest import AwsEnv
from tests.test_pitr.tls import tls_proxy, write_localhost_certificate
from tests.test_recovery.conftest import approvers  # noqa: F401 (shared fixture)

WAIT_SECONDS = 120


def wait_until(condition: Any, what: str, timeout: float = WAIT_SECONDS) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}", pytrace=False)
        time.sleep(0.1)


@dataclass
class ArchivingServer:
    cluster: Cluster
    pitr_dir: Path

    @property
    def app_url(self) -> str:
        return self.cluster.url.with_dbname("app").secret

    def sql(self, query: str, params: Any = None, dbname: str = "app") -> list[tuple[Any, ...]]:
        with psycopg.connect(self.cluster.url.with_dbname(dbname).secret, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def now(self) -> datetime:
        """The server's clock, read after everything before it committed."""
        return self.sql("SELECT clock_timestamp()")[0][0]

    def restart(self) -> None:
        result = self.cluster.pg_ctl(
            "-m", "fast", "-l", str(self.cluster.base / "log"), "-w", "restart"
        )
        assert result.returncode == 0, result.stderr

    def enable_archiving(self, settings: Settings | None = None) -> None:
        """What the operator does with the lines `pitr init` prints: add them, restart (the
        lines of `settings`' server, DATABASE_URL's by default)."""
        for line in server_settings_lines(settings or load_settings()):
            self.sql(f"ALTER SYSTEM SET {line}", dbname="postgres")
        self.restart()

    def hold_still(self) -> None:
        """No commit of the server's own (autovacuum) and no timed segment switch from now
        on, so what the archive holds is exactly what the test archived."""
        self.sql("ALTER SYSTEM SET autovacuum = off", dbname="postgres")
        self.sql("ALTER SYSTEM SET archive_timeout = 0", dbname="postgres")
        self.sql("SELECT pg_reload_conf()", dbname="postgres")
        wait_until(
            lambda: self.sql("SELECT current_setting('archive_timeout')")[0][0] == "0",
            "the reload",
        )

    def switch_and_wait(self) -> str:
        """Close the current WAL segment and wait until the server has archived it. A record
        is written first: on an idle segment, pg_switch_wal() switches nothing."""
        self.sql("SELECT pg_logical_emit_message(false, 'pgvault-test', 'switch')")
        segment = self.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        wait_until(
            lambda: (
                (self.sql("SELECT last_archived_wal FROM pg_stat_archiver")[0][0] or "") >= segment
            ),
            f"{segment} to be archived",
        )
        return segment


def pgvault(*args: str) -> int:
    return main(list(args))


@pytest.fixture
def pitr_dir() -> Iterator[Path]:
    """A folder the postgres OS user can reach (pytest's tmp_path is closed to it)."""
    root = Path(tempfile.mkdtemp(prefix="pgvault-pitr-test-"))
    os.chmod(root, 0o711)
    try:
        yield root / "pitr"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def archiving_server(
    local_env: Path, pitr_dir: Path, make_database: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ArchivingServer]:
    """A private cluster with an `app` database, pgvault pointed at it (DATABASE_URL) and at a
    fresh staging database on the shared server; PITR not set up yet."""
    with start_cluster() as cluster:
        server = ArchivingServer(cluster, pitr_dir)
        server.sql("CREATE DATABASE app", dbname="postgres")
        monkeypatch.setenv("DATABASE_URL", server.app_url)
        monkeypatch.setenv("STAGING_DATABASE_URL", make_database("staging"))
        monkeypatch.setenv("PITR_DIR", str(pitr_dir))
        yield server


@pytest.fixture
def pitr_server(archiving_server: ArchivingServer) -> ArchivingServer:
    """The server with PITR set up as the README says: init, the lines, restart, init
    again (which now checks archiving), a full base backup."""
    assert pgvault("pitr", "init") == 0
    archiving_server.enable_archiving()
    assert pgvault("pitr", "init") == 0
    assert pgvault("pitr", "backup", "--type", "full") == 0
    return archiving_server


@dataclass(frozen=True)
class S3Repository:
    aws: AwsEnv
    ca_file: Path


@pytest.fixture
def s3_repository(
    aws_env: AwsEnv, archiving_server: ArchivingServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[S3Repository]:
    """pgvault's backups in moto's S3, and pgBackRest reaching it through a TLS front."""
    cert_file, key_file = write_localhost_certificate(archiving_server.pitr_dir.parent)
    upstream = urlsplit(aws_env.endpoint)
    with tls_proxy(
        (upstream.hostname or "127.0.0.1", upstream.port or 80), cert_file, key_file
    ) as port:
        monkeypatch.setenv("PITR_S3_ENDPOINT", f"localhost:{port}")
        monkeypatch.setenv("PITR_S3_URI_STYLE", "path")
        monkeypatch.setenv("PITR_S3_CA_FILE", str(cert_file))
        yield S3Repository(aws_env, cert_file)
