"""`recover-rows --time T`: rows deleted after T come back as they were at T, from a cluster
recovered to T that is gone afterwards; rows inserted after T do not.

Setting up point-in-time recovery (a cluster with archive_mode, pgBackRest's stanza, a full
base backup) takes most of a test's time and none of these examine it, so they share one
such cluster per module; each works on tables of its own there and in staging.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgvault_assets.engine.approvals import audit
from pgvault_assets.engine.pitr import recover
from pgvault_assets.engine.pitr.archive import tool_for
from pgvault_assets.engine.postgres.cluster import CLUSTER_PREFIX, start_cluster
from pgvault_assets.engine.recovery import rows
from pgvault_assets.engine.recovery.operations import time_key
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.settings import DatabaseUrl, load_settings
from tests.conftest import CLEARED_VARIABLES, TEST_DB_PREFIX, _drop_databases, admin_connect
from tests.test_faults.test_interrupted import cli  # noqa: F401 (shared fixture)
from tests.test_pitr.conftest import ArchivingServer, pgvault
from tests.test_recovery.helpers import run


@dataclass(frozen=True)
class SharedPitr:
    server: ArchivingServer
    env: dict[str, str]


@pytest.fixture(scope="module")
def shared_pitr(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: str
) -> Iterator[SharedPitr]:
    """One archiving cluster with PITR set up as the README says (init, the lines, restart,
    init again, a full base backup), pgvault's local store, and a staging database."""
    base = tmp_path_factory.mktemp("rows-to-time")
    root = Path(tempfile.mkdtemp(prefix="pgvault-pitr-test-"))  # reachable by postgres
    os.chmod(root, 0o711)
    staging = f"{TEST_DB_PREFIX}staging_{uuid.uuid4().hex[:8]}"
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(staging)))
    try:
        with start_cluster() as cluster, pytest.MonkeyPatch.context() as patch:
            server = ArchivingServer(cluster, root / "pitr")
            server.sql("CREATE DATABASE app", dbname="postgres")
            env = {
                "BACKUP_LOCAL_DIR": str(base / "store"),
                "BACKUP_LOCAL_KEY_FILE": str(base / "key" / "backup.key"),
                "ENVIRONMENT_NAME": "test",
                "DAGSTER_HOME": str(base),
                "PGVAULT_HOME": str(base / "pgvault-home"),
                "DATABASE_URL": server.app_url,
                "STAGING_DATABASE_URL": f"{postgres_server}/{staging}",
                "PITR_DIR": str(server.pitr_dir),
            }
            for name in CLEARED_VARIABLES:
                patch.delenv(name, raising=False)
            for name, value in env.items():
                patch.setenv(name, value)
            assert pgvault("pitr", "init") == 0
            server.enable_archiving()
            assert pgvault("pitr", "init") == 0
            assert pgvault("pitr", "backup", "--type", "full") == 0
            yield SharedPitr(server, env)
    finally:
        _drop_databases([staging])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def server(shared_pitr: SharedPitr, monkeypatch: pytest.MonkeyPatch) -> ArchivingServer:
    """The shared cluster, with pgvault's settings pointed at it for this test."""
    for name, value in shared_pitr.env.items():
        monkeypatch.setenv(name, value)
    return shared_pitr.server


@pytest.fixture
def clusters_made(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The directories of the throwaway clusters this test's recoveries started, heard where
    the engine starts one (the cluster itself runs unchanged)."""
    made: list[Path] = []
    real = recover.restored_cluster

    @contextlib.contextmanager
    def noting(*args: Any, **options: Any) -> Iterator[Any]:
        with real(*args, **options) as cluster:
            made.append(cluster.base)
            yield cluster

    monkeypatch.setattr(recover, "restored_cluster", noting)
    return made


@pytest.fixture
def own_temp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The temporary directory in-process clusters go to, so any found there is this test's."""
    path = Path(tempfile.mkdtemp(prefix="pgv-", dir="/tmp"))  # short: sockets live below
    path.chmod(0o755)  # the clusters run as the postgres OS user
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Deleted:
    """A table whose rows changed around `time`, and what it held then."""

    table: str
    time: datetime
    at_time: dict[int, str]


def make_history(server: ArchivingServer) -> Deleted:
    """Rows 1-5 at the time, row 2 updated before it; afterwards 1 and 2 deleted, 3 updated,
    4 updated then deleted, 6 inserted, 7 inserted then deleted; all archived."""
    table = f"public.orders_{uuid.uuid4().hex[:8]}"
    server.sql(f"CREATE TABLE {table} (id int PRIMARY KEY, note text NOT NULL)")
    server.sql(f"INSERT INTO {table} SELECT i, 'first' FROM generate_series(1, 5) i")
    server.sql(f"UPDATE {table} SET note = 'updated before' WHERE id = 2")
    time = server.now()
    server.sql(f"DELETE FROM {table} WHERE id IN (1, 2)")
    server.sql(f"UPDATE {table} SET note = 'updated after' WHERE id IN (3, 4)")
    server.sql(f"DELETE FROM {table} WHERE id = 4")
    server.sql(f"INSERT INTO {table} VALUES (6, 'inserted after'), (7, 'inserted after')")
    server.sql(f"DELETE FROM {table} WHERE id = 7")
    server.switch_and_wait()
    at_time = {1: "first", 2: "updated before", 3: "first", 4: "first", 5: "first"}
    return Deleted(table, time, at_time)


def table_rows(url: str, table: str) -> dict[int, str]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute(f"SELECT id, note FROM {table} ORDER BY id").fetchall())


def copy_to_staging(server: ArchivingServer, table: str) -> str:
    """Staging holds `table` as production does now; returns staging's URL."""
    staging = os.environ["STAGING_DATABASE_URL"]
    with psycopg.connect(staging, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, note text NOT NULL)")
        for key, note in table_rows(server.app_url, table).items():
            conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (key, note))
    return staging


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def gone(clusters: list[Path]) -> bool:
    return bool(clusters) and not any(path.exists() for path in clusters)


def test_rows_deleted_after_the_time_come_back_as_they_were_then_and_no_others(
    server: ArchivingServer, clusters_made: list[Path]
) -> None:
    history = make_history(server)
    settings = load_settings()
    at = rows.PointInTime(tool_for(settings), settings.require_database(), history.time)

    recovery = rows.recover_rows(
        Vault.from_settings(settings),
        at,
        DatabaseUrl(server.app_url),
        history.table,
        apply=True,
    )

    # 1 and 2 deleted after the time come back as they were then (2 with its update before
    # it), 4 without its update after it; 7, inserted and deleted after it, does not; present
    # rows (3 updated after the time, 6 inserted after it) are left as they are.
    assert table_rows(server.app_url, history.table) == {
        1: "first",
        2: "updated before",
        3: "updated after",
        4: "first",
        5: "first",
        6: "inserted after",
    }
    assert recovery.inserted == 3 and recovery.tables == ((history.table, 3),)
    assert recovery.time == history.time and recovery.day is None
    assert recovery.base_backup and recovery.stopped_at
    assert gone(clusters_made)


def test_with_dependents_brings_back_what_a_cascade_deleted_after_the_time(
    server: ArchivingServer, capsys: pytest.CaptureFixture[str]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    customers, orders = f"public.customers_{suffix}", f"public.orders_{suffix}"
    server.sql(f"CREATE TABLE {customers} (id int PRIMARY KEY)")
    server.sql(
        f"CREATE TABLE {orders} (id int PRIMARY KEY, "
        f"customer_id int NOT NULL REFERENCES {customers} ON DELETE CASCADE)"
    )
    server.sql(f"INSERT INTO {customers} VALUES (1), (2)")
    server.sql(f"INSERT INTO {orders} VALUES (10, 1), (11, 1), (20, 2)")
    time = server.now()
    server.sql(f"DELETE FROM {customers} WHERE id = 1")
    server.switch_and_wait()
    argv = ("recover-rows", "--time", time.isoformat(), "--table", customers, "--where", "id = 1")

    code, out, err = run(capsys, *argv, "--target", "production", "--with-dependents")

    assert code == 0, err
    assert f"3 rows missing from app ({customers}: 1, {orders}: 2)" in out
    code, out, err = run(capsys, *argv, "--target", "production")
    assert code == 0, err
    assert f"1 row missing from app ({customers}: 1)" in out


def test_dry_run_prints_the_rows_as_of_the_time_and_changes_nothing(
    server: ArchivingServer, clusters_made: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    history = make_history(server)
    before = table_rows(server.app_url, history.table)

    code, out, err = run(
        capsys,
        *("recover-rows", "--time", history.time.isoformat(), "--table", history.table),
        *("--target", "production"),
    )

    assert code == 0, err
    inserts = [line for line in out.splitlines() if line.startswith("INSERT INTO")]
    assert len(inserts) == 3
    assert "'updated before'" in out and "'updated after'" not in out
    assert f"-- rows as of {time_key(history.time)}: recovered from base backup" in out
    assert "nothing was changed, add --apply" in out
    assert table_rows(server.app_url, history.table) == before
    assert gone(clusters_made)


def test_staging_apply_is_audited_with_the_time(
    server: ArchivingServer, clusters_made: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    history = make_history(server)
    staging = copy_to_staging(server, history.table)

    code, out, err = run(
        capsys,
        *("recover-rows", "--time", history.time.isoformat(), "--table", history.table),
        *("--target", "staging", "--apply"),
    )

    assert code == 0, err
    assert "inserted 3 of 3 rows" in out
    assert table_rows(staging, history.table) == {
        **history.at_time,
        3: "updated after",
        6: "inserted after",
    }
    (record,) = [
        r
        for r in audit.audit_records(Vault.from_settings(load_settings()), "staging")
        if r.record == audit.ROW_RECOVERY and r.body["table"] == history.table
    ]
    assert record.body["time"] == time_key(history.time) and "date" not in record.body
    assert record.body["succeeded"] is True and record.body["inserted"] == 3
    assert record.body["base_backup"] and record.body["stopped_at"]
    code, out, _ = run(capsys, "audit", "--json")
    assert code == 0 and record.body in json.loads(out)
    code, out, _ = run(capsys, "audit")
    assert code == 0 and f"{history.table} as of {time_key(history.time)} into" in out
    assert gone(clusters_made)


@pytest.mark.parametrize("shift", [timedelta(days=1), -timedelta(days=1)])
def test_a_time_outside_the_window_is_refused_in_one_line_with_no_cluster_left(
    shift: timedelta,
    server: ArchivingServer,
    own_temp: Path,
    clusters_made: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    history = make_history(server)
    when = (history.time + shift).isoformat()

    code, _, err = run(
        capsys, "recover-rows", "--time", when, "--table", history.table, "--target", "production"
    )

    assert code != 0
    line = one_error_line(err)
    if shift > timedelta(0):
        assert "past the end of the WAL archive (the recoverable window ends at" in line
    else:
        assert "before the recoverable window (it starts at" in line
    assert clusters_made == [] and list(own_temp.glob(f"{CLUSTER_PREFIX}*")) == []


def test_the_cluster_is_removed_after_a_failure_too(
    server: ArchivingServer, clusters_made: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    history = make_history(server)

    code, _, err = run(
        capsys,
        *("recover-rows", "--time", history.time.isoformat(), "--table", history.table),
        *("--where", "no_such_column = 1", "--target", "production"),
    )

    assert code != 0
    assert "--where failed in the scratch database" in one_error_line(err)
    assert gone(clusters_made)


def test_production_needs_the_same_approvals_as_a_date(
    server: ArchivingServer,
    approvers,
    make_database: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A request pins the time (and its base backup); staging must hold that recovery first."""
    monkeypatch.setenv("STAGING_DATABASE_URL", make_database("staging"))
    history = make_history(server)
    when = history.time.isoformat()
    scope = ("--table", history.table)
    apply = ("recover-rows", "--time", when, *scope, "--target", "production", "--apply")

    code, _, err = run(capsys, *apply)
    assert code != 0 and "needs an approved request" in one_error_line(err)

    ask = ("request-restore", "--kind", "recover-rows", "--time", when, *scope)
    ask = (*ask, "--target", "production", "--reason", "orders deleted by mistake")
    code, _, err = run(capsys, *ask)
    assert code != 0 and "staging does not hold a recovery to" in one_error_line(err)

    code, _, err = run(capsys, "restore-to-time", "--time", when, "--target", "staging")
    assert code == 0, err
    code, out, err = run(capsys, *ask)
    assert code == 0, err
    request_id = out.split()[0]
    assert f"as of {time_key(history.time)}" in out
    code, _, err = run(capsys, *apply, "--request", request_id, "--skip-confirmation")
    assert code != 0 and "needs 2 distinct approvers" in one_error_line(err)
    for key in (approvers.alice, approvers.bob):
        assert run(capsys, "approve-restore", request_id, "--key", str(key))[0] == 0

    later = (history.time + timedelta(microseconds=1)).isoformat()
    other = ("recover-rows", "--time", later, *scope, "--target", "production", "--apply")
    code, _, err = run(capsys, *other, "--request", request_id, "--skip-confirmation")
    assert code != 0 and "run exactly what was approved" in one_error_line(err)

    code, out, err = run(capsys, *apply, "--request", request_id, "--skip-confirmation")
    assert code == 0, err
    assert table_rows(server.app_url, history.table) == {
        **history.at_time,
        3: "updated after",
        6: "inserted after",
    }
    code, _, err = run(capsys, *apply, "--request", request_id, "--skip-confirmation")
    assert code != 0 and "already executed" in one_error_line(err)


def test_interrupted_removes_its_cluster_and_leaves_the_target(
    server: ArchivingServer,
    cli,  # noqa: F811 (the fixture imported above)
    own_temp: Path,
) -> None:
    history = make_history(server)
    staging = copy_to_staging(server, history.table)
    before = table_rows(staging, history.table)
    child = cli(
        *("recover-rows", "--time", history.time.isoformat(), "--table", history.table),
        *("--target", "staging", "--apply"),
        pause_at="scratch",
        TMPDIR=str(own_temp),
    )
    child.wait_for_pause("scratch")  # the cluster is recovered, the rows not yet read
    assert list(own_temp.glob(f"{CLUSTER_PREFIX}*")), "no throwaway cluster at the pause"

    code, lines = child.interrupt(signal.SIGINT)

    assert code == 130
    (line,) = lines
    assert line.startswith(f"error: row recovery as of {time_key(history.time)} interrupted: ")
    database = staging.rsplit("/", 1)[1]
    assert line.endswith(f"the throwaway cluster was removed; {database} is as it was (SIGINT)")
    assert list(own_temp.glob(f"{CLUSTER_PREFIX}*")) == []
    assert table_rows(staging, history.table) == before


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--time", "2026-11-30T09:00:00"], "has no time zone; add Z (UTC)"),  # never guessed
        (["--time", "2026-11-30T09:00:00Z", "--date", "2026-11-30"], "not allowed with"),
        ([], "one of the arguments --date --time is required"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        pgvault("recover-rows", *argv, "--table", "public.t", "--target", "staging")
    assert exited.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error:") and said in line


def test_without_pitr_init_it_says_to_run_it(
    local_env: Path,
    make_database: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", make_database("prod"))
    monkeypatch.setenv("STAGING_DATABASE_URL", make_database("staging"))
    monkeypatch.setenv("PITR_DIR", str(local_env / "pitr"))

    code, _, err = run(
        capsys,
        *("recover-rows", "--time", "2026-11-30T09:00:00Z", "--table", "public.t"),
        *("--target", "staging"),
    )

    assert code != 0
    assert "run pgvault pitr init" in one_error_line(err)


def test_staging_that_is_production_is_refused_before_any_recovery(
    local_env: Path,
    make_database: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    production = make_database("prod")
    monkeypatch.setenv("DATABASE_URL", production)
    monkeypatch.setenv("STAGING_DATABASE_URL", production)

    code, _, err = run(
        capsys,
        *("recover-rows", "--time", "2026-11-30T09:00:00Z", "--table", "public.t"),
        *("--target", "staging", "--apply"),
    )

    assert code != 0
    assert "reach the same database" in one_error_line(err)
