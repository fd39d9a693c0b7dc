"""Ctrl-C and SIGTERM end pgvault cleanly: children ended, nothing half-written left, one line.

Each command runs as the `pgvault` CLI in a session of its own, and the signal goes to its
whole process group, as a terminal's Ctrl-C or a service manager's stop does. A pause point
holds the command at the stage under test, so the signal lands there every time. "Within
10 s" is the promise an operator is made; on an idle machine the exit takes about 1 s. The
suite runs beside a second busy worker on two cores, where one exit once took longer than
10 s, so the wait allows 30 s: it catches what the promise is about (a retry, a hang, a
child left running, each minutes long), not a slow machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from pgvault_assets.engine.basics.names import object_key, server_context_key
from pgvault_assets.engine.restore.verify import verify_backup
from pgvault_assets.settings import DatabaseUrl
from tests.conftest import AwsEnv, PrivateCluster
from tests.test_engine.helpers import DAY, back_up, vault
from tests.test_faults.conftest import REPO, Pgvault, fill, wait_for
from tests.test_faults.test_killed import ROWS, _marked_target, _oid, _psql_restoring, _scratches

PGVAULT = Path(sys.executable).with_name("pgvault")
EXIT_WITHIN_SECONDS = 30


def _children(pid: int, name: str) -> list[int]:
    """The processes called `name` whose parent is `pid`: the ones that pgvault started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        command = stat[stat.index("(") + 1 : stat.rindex(")")]
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        if parent == pid and command == name:
            found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class Interruptible(Pgvault):
    def interrupt(self, signum: int) -> tuple[int, list[str]]:
        """Signal the process group; the exit status and the stderr lines after the pause."""
        os.killpg(self.proc.pid, signum)
        try:
            code = self.proc.wait(EXIT_WITHIN_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"pgvault still running {EXIT_WITHIN_SECONDS} s after {signal.Signals(signum).name}"
            ) from None
        assert self.proc.stderr is not None
        rest = self.proc.stderr.read().decode(errors="replace").splitlines()
        return code, [line for line in rest if line.strip()]


@pytest.fixture
def cli() -> Iterator[Callable[..., Interruptible]]:
    """Factory: `pgvault ARGS` in a session of its own, paused at `pause_at`; killed at teardown."""
    started: list[Interruptible] = []

    def spawn(*argv: str, pause_at: str | None = None, **env: str) -> Interruptible:
        paused = {"PGVAULT_TEST_PAUSE_AT": pause_at} if pause_at else {}
        proc = subprocess.Popen(
            [str(PGVAULT), *argv],
            env={**os.environ, **paused, **env},
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        started.append(Interruptible(proc, []))
        return started[-1]

    yield spawn
    for child in started:
        if child.proc.poll() is None:
            os.killpg(child.proc.pid, signal.SIGKILL)
            child.proc.wait()


def _one_line(lines: list[str], start: str) -> str:
    assert len(lines) == 1, lines
    assert lines[0].startswith(start), lines[0]
    return lines[0]


def _date_stored(env: Path | AwsEnv) -> list[tuple[str, ...]]:
    """Everything stored under the date's folder, hidden versions too, byte for byte: the
    local store's files (`.versions/` links included) with their hashes, or every version and
    delete marker in the bucket."""
    folder = f"test/{DAY.isoformat()}/"
    if isinstance(env, Path):
        root = env / "store"
        return sorted(
            (path.relative_to(root).as_posix(), hashlib.sha256(path.read_bytes()).hexdigest())
            for path in (root / folder).rglob("*")
            if path.is_file()
        )
    listing = env.s3.list_object_versions(Bucket=env.bucket, Prefix=folder)
    return sorted(
        (item["Key"], item["VersionId"], item.get("ETag", "marker"), str(item["IsLatest"]))
        for item in listing.get("Versions", []) + listing.get("DeleteMarkers", [])
    )


def _runs_canceled_without_retry() -> None:
    with DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert [run.status for run in runs] == [DagsterRunStatus.CANCELED]
        retries = instance.all_logs(runs[0].run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)
    assert retries == []


@pytest.mark.parametrize(
    ("store", "stage", "signum"),
    [
        ("local", "dump", signal.SIGINT),
        ("s3", "dump", signal.SIGTERM),
        ("s3", "upload", signal.SIGINT),
        ("local", "manifest", signal.SIGINT),
        ("s3", "manifest", signal.SIGTERM),
    ],
)
def test_interrupted_backup_exits_with_the_signal_and_keeps_the_previous_backup_alone(
    request: pytest.FixtureRequest, make_database, cli, store: str, stage: str, signum: int
) -> None:
    env = request.getfixturevalue("aws_env" if store == "s3" else "local_env")
    url = make_database("intr")
    fill(url, ROWS)
    previous = back_up(url)
    before = _date_stored(env)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO t SELECT * FROM t")  # the new backup would differ
    child = cli("backup", pause_at=stage, DATABASE_URL=url)
    child.wait_for_pause(stage)
    dumps = _children(child.proc.pid, "pg_dump")
    if stage == "dump":
        assert len(dumps) == 1 and _running(dumps[0]), "pg_dump is not running at the pause"

    code, lines = child.interrupt(signum)

    assert code == 128 + signum
    name = signal.Signals(signum).name
    _one_line(
        lines,
        f"error: backup of {DAY} interrupted: no backup was recorded, the previous one is "
        f"intact ({name})",
    )
    assert not any("Traceback" in line for line in child.stderr + lines)
    assert not any(_running(pid) for pid in dumps), "pg_dump outlived the interrupted backup"
    assert [m.sha256 for m in vault().list_manifests()] == [previous.sha256]
    assert verify_backup(vault(), DAY, full=True).sha256 == previous.sha256
    assert vault().store.pending_uploads(f"test/{DAY.isoformat()}/") == []
    with contextlib.closing(vault().store.open_reader(object_key("test", DAY))) as current:
        assert hashlib.sha256(current.read()).hexdigest() == previous.sha256
    assert _date_stored(env) == before, "the interrupted backup left a new object behind"
    _runs_canceled_without_retry()


@pytest.mark.parametrize("store", ["local", "s3"])
def test_backup_interrupted_before_its_manifest_leaves_nothing_of_a_date_never_backed_up(
    request: pytest.FixtureRequest, make_database, cli, store: str
) -> None:
    env = request.getfixturevalue("aws_env" if store == "s3" else "local_env")
    url = make_database("intr")
    fill(url, ROWS)
    child = cli("backup", pause_at="manifest", DATABASE_URL=url)
    child.wait_for_pause("manifest")
    assert vault().store.exists(object_key("test", DAY)), "no object was committed at the pause"
    assert vault().store.exists(server_context_key("test", DAY))

    code, lines = child.interrupt(signal.SIGINT)

    assert code == 130
    _one_line(lines, f"error: backup of {DAY} interrupted: no backup was recorded")
    assert vault().list_manifests() == []
    assert _date_stored(env) == []
    if isinstance(env, Path):
        assert not (env / "store" / "test" / DAY.isoformat()).exists()


@pytest.fixture
def locked_env(aws_env: AwsEnv, monkeypatch: pytest.MonkeyPatch) -> AwsEnv:
    """pgvault pointed at a bucket created with S3 Object Lock (governance by default)."""
    bucket = f"pgvault-locked-{os.urandom(6).hex()}"
    aws_env.s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    monkeypatch.setenv("BACKUP_S3_BUCKET", bucket)
    return dataclasses.replace(aws_env, bucket=bucket)


def test_backup_interrupted_before_its_manifest_says_a_locked_version_stays_until_cleanup(
    locked_env: AwsEnv, make_database, cli
) -> None:
    """Object Lock refuses to delete the fresh version: it stays, unrecorded, and the line
    says so rather than claim the store is as it was."""
    url = make_database("intr")
    fill(url, ROWS)
    previous = back_up(url)
    before = _date_stored(locked_env)
    child = cli("backup", pause_at="manifest", DATABASE_URL=url)
    child.wait_for_pause("manifest")

    code, lines = child.interrupt(signal.SIGINT)

    assert code == 130
    line = _one_line(
        lines,
        f"error: backup of {DAY} interrupted: no backup was recorded, the previous one is "
        f"intact; an unrecorded version of {object_key('test', DAY)}",
    )
    assert line.endswith("stays until its Object Lock ends and cleanup removes it (SIGINT)")
    assert [m.sha256 for m in vault().list_manifests()] == [previous.sha256]
    assert verify_backup(vault(), DAY, full=True).sha256 == previous.sha256
    added = {(key, version) for key, version, *_ in _date_stored(locked_env)} - {
        (key, version) for key, version, *_ in before
    }
    assert sorted(key for key, _ in added) == [
        object_key("test", DAY),
        server_context_key("test", DAY),
    ]


@pytest.fixture
def backed_up(local_env, make_database) -> str:
    url = make_database("intr")
    fill(url, ROWS)
    back_up(url)
    return url


def test_restore_interrupted_while_loading_drops_its_scratch_and_leaves_the_target(
    backed_up, make_database, cli
) -> None:
    target, old_oid = _marked_target(make_database)
    child = cli(
        "restore-from-backup",
        "--date",
        DAY.isoformat(),
        "--target",
        "staging",
        STAGING_DATABASE_URL=target,
    )
    wait_for(lambda: _psql_restoring(target), "psql restoring into the scratch database")
    loaders = _children(child.proc.pid, "psql")
    assert loaders, "no psql of pgvault's own is loading"

    code, lines = child.interrupt(signal.SIGINT)

    assert code == 130
    dbname = DatabaseUrl(target).dbname
    _one_line(lines, f"error: restore of {DAY} into {dbname} interrupted: ")
    assert lines[0].endswith(f"{dbname} is as it was (SIGINT)")
    assert not any(_running(pid) for pid in loaders), "psql outlived the interrupted restore"
    assert _scratches(target) == []
    assert _oid(target) == old_oid
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT id FROM still_here").fetchone() == (42,)


def _scratch_databases(server_url: str, kind: str) -> list[str]:
    with psycopg.connect(server_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
            (f"pgvault_scratch_{kind}_",),
        ).fetchall()
    return [row[0] for row in rows]


def test_recover_rows_interrupted_drops_its_scratch_database(
    local_env, make_database, private_postgres: PrivateCluster, cli
) -> None:
    """The scratch lives on staging's server: the private cluster, where only this test's are."""
    source = make_database("intr")
    fill(source, 1000)
    back_up(source)
    staging = private_postgres.create_database("pgvault_intr_staging")
    child = cli(
        "recover-rows",
        "--date",
        DAY.isoformat(),
        "--table",
        "public.t",
        "--where",
        "i = 1",
        "--target",
        "staging",
        pause_at="scratch",
        STAGING_DATABASE_URL=staging,
    )
    child.wait_for_pause("scratch")
    assert len(_scratch_databases(private_postgres.url("postgres"), "rows")) == 1

    code, lines = child.interrupt(signal.SIGTERM)

    assert code == 143
    _one_line(
        lines, f"error: row recovery from {DAY} interrupted: its scratch database was dropped"
    )
    assert _scratch_databases(private_postgres.url("postgres"), "rows") == []


def test_drill_interrupted_drops_its_scratch_database(
    local_env, make_database, private_postgres: PrivateCluster, cli
) -> None:
    source = make_database("intr")
    fill(source, 1000)
    today = DAY + timedelta(days=1)
    last_month = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    back_up(source, day=last_month)
    child = cli(
        "drill",
        pause_at="scratch",
        DATABASE_URL=source,
        RESTORE_CHECK_DATABASE_URL=private_postgres.url("postgres"),
    )
    child.wait_for_pause("scratch")
    assert len(_scratch_databases(private_postgres.url("postgres"), "drill")) == 1

    code, lines = child.interrupt(signal.SIGINT)

    assert code == 130
    _one_line(lines, "error: drill interrupted: its scratch database and throwaway cluster")
    assert _scratch_databases(private_postgres.url("postgres"), "drill") == []


def test_restore_proof_interrupted_in_its_dagster_step_ends_the_run_canceled(
    local_env, make_database, private_postgres: PrivateCluster, cli
) -> None:
    """The backup's `restorable` check is interrupted in its own step: the run is CANCELED
    (not failed, not retried) and the proof's scratch database is gone."""
    source = make_database("intr")
    fill(source, 1000)
    server = private_postgres.url("postgres")
    child = cli(
        "backup",
        "--prove-restorable",
        pause_at="roles",
        DATABASE_URL=source,
        RESTORE_CHECK_DATABASE_URL=server,
    )
    child.wait_for_pause("roles")
    before = _scratch_databases_beside(server)
    assert before, "the proof has no scratch database at the pause"

    code, lines = child.interrupt(signal.SIGTERM)

    assert code == 143
    _one_line(
        lines,
        f"error: restore proof of {DAY} interrupted: its scratch database was dropped; "
        "the backup itself is stored, not yet proven restorable (SIGTERM)",
    )
    assert not set(before) & set(_scratch_databases_beside(server))
    _runs_canceled_without_retry()


def _scratch_databases_beside(server_url: str) -> list[str]:
    with psycopg.connect(server_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", ("%\\_restore\\_%",)
        ).fetchall()
    return [row[0] for row in rows]


def test_backup_interrupted_while_waiting_to_retry_ends_at_once_and_canceled(local_env) -> None:
    """Between attempts Dagster holds the signals and waits out the backoff; the command still
    ends at once, and the run is CANCELED with no further attempt."""
    with socket.socket() as probe:  # nothing listens on it once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [str(PGVAULT), "backup", "--retries", "2"],
        env={
            **os.environ,
            "DATABASE_URL": f"postgresql://app@127.0.0.1:{port}/app",
            "BACKUP_RETRY_DELAY_SECONDS": "600",
        },
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    child = Interruptible(proc, [])
    try:
        assert proc.stdout is not None
        wait_for(
            lambda: proc.stdout.readline().startswith(b"attempt 1 failed: "),
            "the first failed attempt",
        )

        code, lines = child.interrupt(signal.SIGTERM)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert code == 143
    # Dagster's first-run notices come before it; pgvault's own line is the one error.
    _one_line(
        [line for line in lines if line.startswith("error: ")],
        f"error: backup of {DAY} interrupted between its attempts or steps (SIGTERM)",
    )
    assert lines[-1].startswith("error: ") and not any("Traceback" in line for line in lines)
    with DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
        retries = instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY)
    assert run.status == DagsterRunStatus.CANCELED
    assert len(retries) == 1


def test_interrupted_last_attempt_sends_sentry_no_error_and_alerts_nothing(
    local_env, make_database, alerts_captured, cli
) -> None:
    """A Ctrl-C is no failed backup: its monitor's check-in stays open and nothing is alerted,
    even on the attempt after which no retry would come."""
    url = make_database("intr")
    fill(url, ROWS)
    child = cli("backup", "--retries", "0", pause_at="dump", DATABASE_URL=url)
    child.wait_for_pause("dump")
    wait_for(alerts_captured.checkins, "the in-progress check-in")

    code, _ = child.interrupt(signal.SIGINT)

    assert code == 130
    assert [c["status"] for c in alerts_captured.checkins()] == ["in_progress"]
    assert [path for path, _ in alerts_captured.requests if path.startswith("/hook")] == []
