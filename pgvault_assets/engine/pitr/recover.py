"""Recover a throwaway cluster to a point in time and prove the target was reached.

pgBackRest restores the base backup into a private data directory and writes the recovery
settings; the server then replays archived WAL up to the target and promotes. Its exit code
proves nothing: a target beyond the archive makes PostgreSQL stop with "recovery ended before
configured recovery target was reached" after pgBackRest returned 0. So the cluster is watched
until it is promoted (`pg_is_in_recovery()` false) or has stopped, and its log must say where
recovery stopped.
"""

from __future__ import annotations

import contextlib
import functools
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg

from pgvault_assets.engine.pitr.runner import PgBackRest, PitrFailed
from pgvault_assets.engine.pitr.window import Window, read_window, segment_index
from pgvault_assets.engine.postgres.cluster import Cluster, restored_cluster, server_running
from pgvault_assets.engine.postgres.postgres import connect, table_row_counts
from pgvault_assets.errors import ConfigError, PgvaultError
from pgvault_assets.settings import DatabaseUrl

DEFAULT_REPLAY_TIMEOUT_SECONDS = 6 * 3600
_NOT_REACHED = "recovery ended before configured recovery target was reached"
_STOPPED = re.compile(
    r"recovery stopping (?:before|after) (?:commit|abort) of transaction \d+, time (.+)"
)
_FATAL = re.compile(r"(?:FATAL|PANIC):\s+(.*)")
_LAST_COMMIT = re.compile(r"last completed transaction was at log time (.+)")


class RecoveryTargetNotReached(PitrFailed):
    """The archive ends before the target time: nothing was recovered."""


@dataclass(frozen=True)
class Recovered:
    """A cluster promoted at the target: where recovery stopped and how long replay took."""

    cluster: Cluster
    target: datetime | None
    """None: replayed to the end of the archive."""
    backup_label: str
    stopped_at: str
    replay_seconds: float

    def database(self, name: str) -> DatabaseUrl:
        return self.cluster.url.with_dbname(name)


def target_text(target: datetime) -> str:
    """PostgreSQL's recovery_target_time, in UTC to the microsecond."""
    if target.tzinfo is None:
        raise ConfigError("a recovery target time needs a time zone (add Z or +00:00)")
    return target.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def _refuse_outside(window: Window, target: datetime, pinned: str | None = None) -> str:
    """The base backup to recover `target` from, or the one line saying why not: before
    anything is restored, so a time outside the window costs no restore."""
    latest = window.latest
    if latest is not None and target > latest:
        raise RecoveryTargetNotReached(
            f"{target_text(target)} is past the end of the WAL archive (the recoverable window "
            f"ends at {latest:%Y-%m-%d %H:%M:%S}Z); pick an earlier time (pgvault pitr status "
            "shows the window)"
        )
    backup = window.backup_for(target)
    if pinned is not None and (backup is None or backup.label != pinned):
        raise PitrFailed(
            f"base backup {pinned}, which was approved for {target_text(target)}, is no longer "
            f"the one to recover from ({backup.label if backup else 'none is'}); nothing was changed"
        )
    if backup is None:
        earliest = window.earliest
        raise RecoveryTargetNotReached(
            f"{target_text(target)} is before the recoverable window "
            + (
                f"(it starts at {earliest:%Y-%m-%d %H:%M:%S}Z, the end of the oldest base backup)"
                if earliest
                else "(there is no base backup yet; run pgvault pitr backup --type full)"
            )
        )
    start = segment_index(backup.wal_start)
    for gap in window.gaps:
        if segment_index(gap.before) <= start:
            continue
        raise PitrFailed(
            f"the WAL archive has a gap ({gap}); a recovery past it would stop short. "
            "Take a new full base backup (pgvault pitr backup --type full) and recover to a time after it"
        )
    return backup.label


def _log(cluster: Cluster) -> str:
    try:
        return (cluster.base / "log").read_text(errors="replace")
    except OSError:
        return ""


def _promoted(cluster: Cluster) -> bool:
    try:
        with psycopg.connect(cluster.url.secret, connect_timeout=5, autocommit=True) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error:
        return False
    return row is not None and not row[0]


def _wait_for_promotion(cluster: Cluster, what: str, timeout: float) -> str:
    """Wait until the server is promoted or has stopped; return its log once promoted."""
    deadline = time.monotonic() + timeout
    while not _promoted(cluster):
        log = _log(cluster)
        if not server_running(cluster) and re.search(r"shut down|FATAL|PANIC", log):
            if _NOT_REACHED in log:
                raise RecoveryTargetNotReached(
                    f"{what} is past the end of the WAL archive: recovery ended "
                    "before reaching it; pick an earlier time (pgvault pitr status shows the window)"
                )
            fatal = _FATAL.search(log)
            raise PitrFailed(
                "the recovering server stopped: "
                + (fatal.group(1).strip() if fatal else "see its log")
            )
        if time.monotonic() > deadline:
            raise PitrFailed(f"recovery to {what} did not finish within {timeout:g} s")
        time.sleep(0.2)
    return _log(cluster)


def _replayed(
    stack: contextlib.ExitStack,
    tool: PgBackRest,
    label: str,
    target: datetime | None,
    *,
    superuser: str,
    source_major: int | None,
    root: Path | None,
    replay_timeout: float,
) -> tuple[Cluster, str]:
    """A cluster (closed with `stack`) restored from `label` and promoted at `target`, or at
    the end of the archive when `target` is None; and its log."""

    def fill(data: Path) -> None:
        to = ("--type=default",)
        if target is not None:
            to = ("--type=time", f"--target={target_text(target)}", "--target-action=promote")
        tool.run("restore", f"--pg1-path={data}", f"--set={label}", *to, "--archive-mode=off")

    cluster = stack.enter_context(
        restored_cluster(fill, superuser=superuser, source_major=source_major, root=root)
    )
    what = "the end of the archive" if target is None else target_text(target)
    return cluster, _wait_for_promotion(cluster, what, replay_timeout)


@contextlib.contextmanager
def recover_to_time(
    tool: PgBackRest,
    target: datetime,
    *,
    superuser: str,
    source_major: int | None = None,
    root: Path | None = None,
    replay_timeout: float = DEFAULT_REPLAY_TIMEOUT_SECONDS,
    base_backup: str | None = None,
) -> Iterator[Recovered]:
    """A throwaway cluster recovered to `target` and promoted; always stopped and removed.

    It archives nothing (`archive-mode=off`), so its new timeline never reaches the
    repository; it listens on its private socket only. `base_backup` pins the backup an
    approval named: a recovery from any other is refused.

    Every time of the window `pitr status` shows is recoverable. PostgreSQL stops at a time
    target only at a commit after it, so a time after the archive's last commit (yet inside
    the window) makes it end recovery short of the target; the state at that time is the
    archive's end, so that is what it recovers to, replaying again without a target.
    """
    window = read_window(tool)
    label = _refuse_outside(window, target, base_backup)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        replay = functools.partial(
            _replayed,
            stack,
            tool,
            label,
            superuser=superuser,
            source_major=source_major or window.major,
            root=root,
            replay_timeout=replay_timeout,
        )
        to_end = window.latest is not None and target >= window.latest
        try:
            cluster, log = replay(None if to_end else target)
        except RecoveryTargetNotReached:
            stack.close()
            to_end = True
            cluster, log = replay(None)
        if to_end:
            last = _LAST_COMMIT.search(log)
            stopped_at = last.group(1).strip() if last else "the end of the archive"
        else:
            stopped = _STOPPED.search(log)
            if stopped is None:
                raise PitrFailed(
                    f"the server was promoted without saying where recovery stopped; "
                    f"{target_text(target)} may not have been reached, so nothing is used from it"
                )
            stopped_at = stopped.group(1).strip()
        yield Recovered(cluster, target, label, stopped_at, round(time.perf_counter() - started, 3))


@contextlib.contextmanager
def recover_to_end(
    tool: PgBackRest,
    base_backup: str,
    *,
    superuser: str,
    root: Path | None = None,
    replay_timeout: float = DEFAULT_REPLAY_TIMEOUT_SECONDS,
) -> Iterator[Recovered]:
    """A throwaway cluster restored from `base_backup` and replayed through every archived
    segment after it: the proof that this backup and the WAL chain from it recover. (A time
    target needs a commit after it in the archive, which an idle database may not have.)"""
    window = read_window(tool)
    if base_backup not in {b.label for b in window.backups}:
        raise PitrFailed(f"base backup {base_backup} is not in the repository")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        cluster, log = _replayed(
            stack,
            tool,
            base_backup,
            None,
            superuser=superuser,
            source_major=window.major,
            root=root,
            replay_timeout=replay_timeout,
        )
        last = _LAST_COMMIT.search(log)
        yield Recovered(
            cluster,
            None,
            base_backup,
            last.group(1).strip() if last else "the end of the archive",
            round(time.perf_counter() - started, 3),
        )


def source_user(url: DatabaseUrl) -> str:
    """The role to read a recovered cluster as: the source URL's, which exists there."""
    return unquote(urlsplit(url.secret).username or "postgres")


@dataclass(frozen=True)
class RestorableProof:
    base_backup: str
    recovered_to: str
    replay_seconds: float
    table_rows: dict[str, int]


def prove_restorable(
    tool: PgBackRest,
    source: DatabaseUrl,
    *,
    choose: Callable[[Sequence[str]], str] = random.choice,
    root: Path | None = None,
) -> RestorableProof:
    """Recover a base backup chosen by `choose` (at random, by default) through the whole
    archive after it into a throwaway cluster, and read every table of `source`'s database
    there: the measured RTO of a point-in-time recovery is its replay time."""
    labels = [b.label for b in read_window(tool).backups]
    if not labels:
        raise PitrFailed("there is no base backup to prove; run pgvault pitr backup --type full")
    label = choose(labels)
    with recover_to_end(
        tool, label, superuser=unquote(urlsplit(source.secret).username or "postgres"), root=root
    ) as recovered:
        try:
            with connect(recovered.database(source.dbname)) as conn:
                rows = table_row_counts(conn)
        except PgvaultError as exc:
            raise PitrFailed(f"the recovered {source.dbname} cannot be read: {exc}") from None
    return RestorableProof(label, recovered.stopped_at, recovered.replay_seconds, rows)
