"""Throwaway PostgreSQL clusters: the isolated server a restore proof runs on.

A proof that restores onto the production server loads it with a full restore, and only shows
that the backup restores beside whatever that server already holds. A private cluster (initdb
into a temporary directory, a free loopback port, its own socket directory, a random
password) is the manual's isolated test environment: an empty server of the backup's major
version, gone afterwards.

A run killed before its `finally` leaves its directory and perhaps its server. Each run holds
an exclusive lock on `<dir>.lock` for the cluster's whole life; the kernel releases it when the
run dies, so the next run removes every prefixed directory whose lock it can take, stopping
the server in it first if that server is still running.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pgvault_assets.engine.basics.interrupts import run_in_own_group
from pgvault_assets.errors import ConfigError, PgvaultError
from pgvault_assets.settings import DatabaseUrl

log = logging.getLogger(__name__)

CLUSTER_PREFIX = "pgvault-cluster-"
POSTGRES_ROOT = Path("/usr/lib/postgresql")
PROOF_LOCK_NAME = "pgvault-restore-proof.lock"
OS_USER = "postgres"
START_ATTEMPTS = 3


class ClusterFailed(PgvaultError):
    """The throwaway cluster could not be created or started; nothing was restored."""


@dataclass(frozen=True)
class Cluster:
    """A running private cluster: its directory, binaries, port, and superuser URL."""

    base: Path
    bindir: Path
    port: int
    url: DatabaseUrl
    """The `postgres` database as the `postgres` superuser, password included."""

    @property
    def data(self) -> Path:
        return self.base / "data"

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run pg_ctl on this cluster as the user owning it (tests restart it this way)."""
        return _run_as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), *args])


def major_of(version: str) -> int | None:
    """The major version in a manifest's `server_version` ("PostgreSQL 15.8 (Debian ...)")."""
    match = re.search(r"PostgreSQL (\d+)", version)
    return int(match.group(1)) if match else None


def server_bindir(source_major: int | None = None, root: Path = POSTGRES_ROOT) -> Path:
    """The binaries of the backup's major version if installed, else the newest installed."""
    installed = {
        int(initdb.parents[1].name): initdb.parent
        for initdb in root.glob("*/bin/initdb")
        if initdb.parents[1].name.isdigit()
    }
    if source_major in installed:
        return installed[source_major]
    if installed:
        return installed[max(installed)]
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise ConfigError(
        f"initdb is not installed (looked in {root}/*/bin and PATH); install the postgresql "
        "server package, or set RESTORE_CHECK_DATABASE_URL to a server for restore proofs"
    )


def _owner_prefix() -> list[str]:
    """PostgreSQL refuses to run as root: as root, its commands run as the postgres user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        raise ConfigError(
            "running as root, a throwaway cluster needs the postgres OS user; install the "
            "postgresql server package, or set RESTORE_CHECK_DATABASE_URL"
        ) from None
    return ["runuser", "-u", OS_USER, "--"]


def _run_as_owner(command: list[str]) -> subprocess.CompletedProcess[str]:
    return run_in_own_group([*_owner_prefix(), *command], text=True, timeout=120, cwd="/")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap a stopped server)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _stop_postmaster(data: Path) -> None:
    """What `pg_ctl -m immediate stop` does, without pg_ctl's refusal to run as root: SIGQUIT
    to the postmaster named in postmaster.pid, if it is alive and serves `data`, then wait."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return
    if os.fsencode(data) not in command:
        return  # the pid was reused by a process that is not this cluster's server
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + 30
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def remove_leftover_clusters(root: Path | None = None) -> tuple[Path, ...]:
    """Stop and remove the clusters of dead runs under `root`; return their directories.

    A live run holds its cluster's lock, so a cluster whose lock can be taken is a killed
    run's: its server (if still up) is stopped and its directory removed.
    """
    root = Path(tempfile.gettempdir()) if root is None else root
    removed = []
    for lock_path in sorted(root.glob(f"{CLUSTER_PREFIX}*.lock")):
        try:
            fd = os.open(lock_path, os.O_RDONLY)
        except OSError:
            continue  # removed by another run meanwhile
        try:
            if not _try_lock(fd):
                continue
            base = lock_path.with_suffix("")
            if base.is_dir():
                _stop_postmaster(base / "data")
                shutil.rmtree(base, ignore_errors=True)
                removed.append(base)
                log.warning("removed %s, the throwaway cluster of an interrupted run", base)
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
        finally:
            os.close(fd)
    return tuple(removed)


@contextlib.contextmanager
def _claimed_directory(root: Path) -> Iterator[Path]:
    """A new cluster directory under `root`, locked from before it exists until it is gone.

    The lock file gets its findable name only once locked (a rename keeps the lock), so
    another run's sweep never mistakes a cluster being born for a dead one.
    """
    fd, hidden = tempfile.mkstemp(prefix=f".{CLUSTER_PREFIX}", suffix=".lock", dir=root)
    lock_path = Path(hidden).with_name(Path(hidden).name.removeprefix("."))
    base = lock_path.with_suffix("")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(hidden, lock_path)
        base.mkdir(mode=0o700)
        if _owner_prefix():
            shutil.chown(base, OS_USER, OS_USER)
        yield base
    finally:
        try:
            _stop_postmaster(base / "data")
            shutil.rmtree(base, ignore_errors=True)
            for path in (lock_path, Path(hidden)):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        finally:
            os.close(fd)


def _initdb(bindir: Path, base: Path, password: str) -> None:
    password_file = base / "password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    if _owner_prefix():
        shutil.chown(password_file, OS_USER, OS_USER)
    try:
        result = _run_as_owner(
            [
                str(bindir / "initdb"),
                "-D",
                str(base / "data"),
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                f"--pwfile={password_file}",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
    finally:
        password_file.unlink()
    if result.returncode != 0:
        raise ClusterFailed(
            f"initdb failed for a throwaway cluster ({_last_line(result.stderr)}); check the "
            f"space and permissions of {base.parent}, or set RESTORE_CHECK_DATABASE_URL"
        )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _start(bindir: Path, base: Path, *, durable: bool) -> int:
    """Start the server on a free loopback port; retried on a port taken meanwhile."""
    log_file = base / "log"
    problem = "no attempt"
    for _ in range(START_ATTEMPTS):
        port = _free_port()
        options = [
            f"-p {port}",
            f"-k {shlex.quote(str(base))}",
            "-c listen_addresses=127.0.0.1",
            *([] if durable else ["-c fsync=off", "-c synchronous_commit=off"]),
        ]
        result = _run_as_owner(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(base / "data"),
                "-l",
                str(log_file),
                "-o",
                " ".join(options),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        if result.returncode == 0:
            return port
        _stop_postmaster(base / "data")
        with contextlib.suppress(OSError):
            problem = _last_line(log_file.read_text(errors="replace"))
    raise ClusterFailed(
        f"a throwaway PostgreSQL cluster did not start ({problem}); see its log, or set "
        "RESTORE_CHECK_DATABASE_URL to a server for restore proofs"
    )


@contextlib.contextmanager
def start_cluster(
    *, source_major: int | None = None, durable: bool = False, root: Path | None = None
) -> Iterator[Cluster]:
    """Create and start a private cluster; always stop and remove it afterwards.

    `durable` keeps fsync on, for a drill whose timings must be a real server's; a proof's
    cluster is thrown away anyway, so by default it skips the flushes.
    """
    root = Path(tempfile.gettempdir()) if root is None else root
    remove_leftover_clusters(root)
    bindir = server_bindir(source_major)
    password = secrets.token_urlsafe(24)
    with _claimed_directory(root) as base:
        _initdb(bindir, base, password)
        port = _start(bindir, base, durable=durable)
        url = DatabaseUrl(f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres")
        yield Cluster(base, bindir, port, url)


@contextlib.contextmanager
def throwaway_cluster(
    *, source_major: int | None = None, durable: bool = False, root: Path | None = None
) -> Iterator[DatabaseUrl]:
    """The URL of a running private cluster's `postgres` database, removed afterwards."""
    with start_cluster(source_major=source_major, durable=durable, root=root) as cluster:
        yield cluster.url


# A physically restored cluster listens on nothing but its private socket, trusts only that
# socket, archives nothing and logs to the file pg_ctl names, whatever its own configuration
# (restored with it, or absent: Debian keeps postgresql.conf outside the data directory) says.
RESTORED_PORT = 5432
_RESTORED_OPTIONS = (
    "-c listen_addresses=''",
    "-c archive_mode=off",
    "-c logging_collector=off",
    "-c log_destination=stderr",
    "-c ssl=off",
    "-c hot_standby=on",
    "-c fsync=off",
    "-c synchronous_commit=off",
)


def _as_owner(path: Path) -> None:
    if _owner_prefix():
        shutil.chown(path, OS_USER, OS_USER)


@contextlib.contextmanager
def restored_cluster(
    fill: Callable[[Path], None],
    *,
    superuser: str,
    source_major: int | None = None,
    root: Path | None = None,
) -> Iterator[Cluster]:
    """Start a server on a data directory `fill` writes (a physical restore); always stop and
    remove it. It is started, not waited for: a recovery may replay for a long time, and its
    caller knows what it waits for (promotion). Connections come through its socket only, as
    `superuser` without a password."""
    root = Path(tempfile.gettempdir()) if root is None else root
    remove_leftover_clusters(root)
    bindir = server_bindir(source_major)
    with _claimed_directory(root) as base:
        data = base / "data"
        data.mkdir(mode=0o700)
        _as_owner(data)
        fill(data)
        hba = base / "pg_hba.conf"
        hba.write_text("local all all trust\n")
        _as_owner(hba)
        config = data / "postgresql.conf"
        if not config.exists():
            config.touch(mode=0o600)
            _as_owner(config)
        options = [
            f"-p {RESTORED_PORT}",
            f"-k {shlex.quote(str(base))}",
            f"-c hba_file={shlex.quote(str(hba))}",
            *_RESTORED_OPTIONS,
        ]
        result = _run_as_owner(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(base / "log"),
                "-o",
                " ".join(options),
                "-W",
                "start",
            ]
        )
        if result.returncode != 0:
            raise ClusterFailed(
                f"the restored cluster did not start ({_last_line(result.stderr)}); see {base / 'log'}"
            )
        host = quote(str(base), safe="")
        url = DatabaseUrl(
            f"postgresql://{quote(superuser, safe='')}@/postgres?host={host}&port={RESTORED_PORT}"
        )
        yield Cluster(base, bindir, RESTORED_PORT, url)


def server_running(cluster: Cluster) -> bool:
    """Whether the cluster's postmaster is alive (pg_ctl status, which needs no connection)."""
    return cluster.pg_ctl("status").returncode == 0


def _open_shared(path: Path) -> int:
    """Open (creating if needed) a lock file another user may have created first."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644))
        return os.open(path, os.O_RDONLY)


@contextlib.contextmanager
def one_proof_at_a_time(root: Path | None = None) -> Iterator[None]:
    """Wait until no other restore proof on this machine runs, and hold that until done.

    A backfill of the restorable check must not start ten full restores at once; Dagster's
    pool serializes the checks it runs, this lock also the CLI's and anything else's.
    """
    root = Path(tempfile.gettempdir()) if root is None else root
    fd = _open_shared(root / PROOF_LOCK_NAME)
    try:
        if not _try_lock(fd):
            log.info("another restore proof is running on this machine; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def proof_server(
    configured: DatabaseUrl | None,
    *,
    source_major: int | None = None,
    durable: bool = False,
    root: Path | None = None,
) -> Iterator[DatabaseUrl]:
    """The server a restore proof restores onto, one proof at a time: `configured`
    (RESTORE_CHECK_DATABASE_URL), else a throwaway cluster, never the backed-up server."""
    with one_proof_at_a_time(root):
        if configured is not None:
            yield configured
            return
        with throwaway_cluster(source_major=source_major, durable=durable, root=root) as url:
            yield url
