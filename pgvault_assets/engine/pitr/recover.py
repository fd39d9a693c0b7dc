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
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from pgvault_assets.engine.cluster import Cluster, restored_cluster, server_running
from pgvault_assets.engine.pitr.runner import PgBackRest, PitrFailed
from pgvault_assets.engine.pitr.window import Window, read_window, segment_index
from pgvault_assets.errors import ConfigError
from pgvault_assets.settings import DatabaseUrl

DEFAULT_REPLAY_TIMEOUT_SECONDS = 6 * 3600
_NOT_REACHED = "recovery ended before configured recovery target was reached"
_STOPPED = re.compile(
    r"recovery stopping (?:before|after) (?:commit|abort) of transaction \d+, time (.+)"
)
_FATAL = re.compile(r"(?:FATAL|PANIC):\s+(.*)")


class RecoveryTargetNotReached(PitrFailed):
    """The archive ends before the target time: nothing was recovered."""


@dataclass(frozen=True)
class Recovered:
    """A cluster promoted at the target: where recovery stopped and how long replay took."""

    cluster: Cluster
    target: datetime
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


def _wait_for_promotion(cluster: Cluster, target: datetime, timeout: float) -> str:
    """Wait until the server is promoted or has stopped; return where recovery stopped."""
    deadline = time.monotonic() + timeout
    while not _promoted(cluster):
        log = _log(cluster)
        if not server_running(cluster) and re.search(r"shut down|FATAL|PANIC", log):
            if _NOT_REACHED in log:
                raise RecoveryTargetNotReached(
                    f"{target_text(target)} is past the end of the WAL archive: recovery ended "
                    "before reaching it; pick an earlier time (pgvault pitr status shows the window)"
                )
            fatal = _FATAL.search(log)
            raise PitrFailed(
                "the recovering server stopped: "
                + (fatal.group(1).strip() if fatal else "see its log")
            )
        if time.monotonic() > deadline:
            raise PitrFailed(
                f"recovery to {target_text(target)} did not finish within {timeout:g} s"
            )
        time.sleep(0.2)
    stopped = _STOPPED.search(_log(cluster))
    if stopped is None:
        raise PitrFailed(
            f"the server was promoted without saying where recovery stopped; {target_text(target)} "
            "may not have been reached, so nothing is used from it"
        )
    return stopped.group(1).strip()


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
    """
    window = read_window(tool)
    label = _refuse_outside(window, target, base_backup)

    def fill(data: Path) -> None:
        tool.run(
            "restore",
            f"--pg1-path={data}",
            f"--set={label}",
            "--type=time",
            f"--target={target_text(target)}",
            "--target-action=promote",
            "--archive-mode=off",
        )

    started = time.perf_counter()
    with restored_cluster(
        fill, superuser=superuser, source_major=source_major or window.major, root=root
    ) as cluster:
        stopped_at = _wait_for_promotion(cluster, target, replay_timeout)
        yield Recovered(cluster, target, label, stopped_at, round(time.perf_counter() - started, 3))
