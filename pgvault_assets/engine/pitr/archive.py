"""Set up WAL archiving for a server, take base backups, and observe the archive.

The server is the one `settings` are pinned to (a fleet database's, or DATABASE_URL's for the
fleet of one): its stanza is `names.pitr_stanza(settings)`, shared by every database on it.

`pitr init` is idempotent: the configuration is rewritten from the settings (the sealed
passphrase is reused), the stanza is created if missing, and pgBackRest's `check` runs once
the server archives with pgvault's command (archive_mode needs a restart, which pgvault never
does on its own).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from pgvault_assets.alerts import Alert
from pgvault_assets.engine.basics import names
from pgvault_assets.engine.pitr import BACKUP_KINDS
from pgvault_assets.engine.pitr import config as pc
from pgvault_assets.engine.pitr.passphrase import ensure_passphrase
from pgvault_assets.engine.pitr.runner import PgBackRest, PitrFailed
from pgvault_assets.engine.pitr.window import (
    BaseBackup,
    Window,
    parse_system_id,
    read_window,
    segment_index,
)
from pgvault_assets.engine.postgres.postgres import connect, one_row
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import ConfigError
from pgvault_assets.settings import DatabaseUrl, Settings

SEGMENT_BYTES = 16 * 1024 * 1024
RESOLVED = "pitr_archive_resolved"
LOG_HINT = "the server's log and pgBackRest's archive-push log (log/ beside its configuration)"


def tool_for(settings: Settings) -> PgBackRest:
    """pgBackRest with the server's configuration; refuses before `pitr init` wrote it."""
    stanza = names.pitr_stanza(settings)
    if not stanza.config_file.exists():
        raise ConfigError(
            f"point-in-time recovery is not set up ({stanza.config_file} does not exist); "
            f"run pgvault pitr init{_database_option(settings)}"
        )
    password = settings.database_url.password if settings.database_url else None
    return PgBackRest(stanza.config_file, stanza.name, password)


def _database_option(settings: Settings) -> str:
    return f" --database {settings.database}" if settings.database else ""


@dataclass(frozen=True)
class ArchiverState:
    """The server's side of archiving: its settings and `pg_stat_archiver`."""

    archive_mode: str
    archive_command: str
    archived_count: int
    failed_count: int
    last_archived_wal: str | None
    last_archived_at: datetime | None
    last_failed_wal: str | None
    last_failed_at: datetime | None
    ready_count: int
    """Segments waiting in pg_wal/archive_status (.ready): the archive's backlog."""
    current_lsn: int
    observed_at: datetime
    """The server's own clock, so ages are measured against the clock that stamped them."""

    def archives_with(self, command: str) -> bool:
        return self.archive_mode in ("on", "always") and self.archive_command == command

    @property
    def failing(self) -> bool:
        """The latest attempt failed: a failure since the last success."""
        if self.last_failed_at is None:
            return False
        return self.last_archived_at is None or self.last_failed_at > self.last_archived_at

    @property
    def waiting(self) -> bool:
        """WAL was written past the newest archived segment: an idle server has nothing to
        archive, and its newest segment may grow old without anything being late."""
        if self.ready_count > 0:
            return True
        if self.last_archived_wal is None or len(self.last_archived_wal) != 24:
            return self.current_lsn > 0 and self.failed_count > 0
        archived_end = (segment_index(self.last_archived_wal) + 1) * SEGMENT_BYTES
        return self.current_lsn > archived_end

    @property
    def lag(self) -> timedelta | None:
        """How old the newest archived WAL is while WAL waits to be archived; None when
        nothing waits."""
        if not self.waiting or self.last_archived_at is None:
            return None
        return max(self.observed_at - self.last_archived_at, timedelta(0))


def read_archiver(url: DatabaseUrl) -> ArchiverState:
    with connect(url) as conn:
        row = one_row(
            conn,
            """
            SELECT current_setting('archive_mode'), current_setting('archive_command'),
                   archived_count, failed_count, last_archived_wal, last_archived_time,
                   last_failed_wal, last_failed_time,
                   (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'),
                   pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, now()
            FROM pg_stat_archiver
            """,
        )
    return ArchiverState(
        archive_mode=row[0],
        archive_command=row[1],
        archived_count=int(row[2]),
        failed_count=int(row[3]),
        last_archived_wal=row[4],
        last_archived_at=row[5],
        last_failed_wal=row[6],
        last_failed_at=row[7],
        ready_count=int(row[8]),
        current_lsn=int(row[9]),
        observed_at=row[10],
    )


@dataclass(frozen=True)
class InitResult:
    config_file: Path
    stanza: str
    server_lines: list[str]
    archiving: bool
    """The server already archives with pgvault's command (else the lines, then a restart)."""


def _require_reachable(config: Path) -> None:
    """The archive command runs as postgres: it must be able to read the configuration
    through every parent folder."""
    prefix = ["runuser", "-u", pc.OS_USER, "--"] if os.geteuid() == 0 else []
    result = subprocess.run(
        [*prefix, "test", "-r", str(config)], capture_output=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise ConfigError(
            f"the postgres OS user cannot read files in {config.parent} (a parent folder is "
            "closed to it), so no pgBackRest configuration was written there; "
            "set PITR_DIR to a folder postgres can reach, such as /var/lib/pgvault/pitr"
        )


def _refuse_another_cluster(settings: Settings, server: pc.Server) -> None:
    """A stanza archives one cluster: rewriting its configuration for another (a rebuilt
    server under the same environment or fleet server name) would stop the first one's archiving, and
    pgBackRest would refuse the new one's WAL anyway."""
    if not names.pitr_stanza(settings).config_file.exists():
        return
    try:
        archived = parse_system_id(tool_for(settings).json("info"))
    except PitrFailed:
        return  # no readable stanza yet: nothing to protect
    if archived is not None and archived != server.system_id:
        stanza = names.pitr_stanza(settings).name
        raise ConfigError(
            f"stanza {stanza} archives another cluster (system id {archived}, "
            f"this server is {server.system_id}); give this server its own ENVIRONMENT_NAME, "
            "PITR_DIR or name in the fleet file, and nothing was changed"
        )


def init_pitr(settings: Settings, vault: Vault) -> InitResult:
    """Write the configuration, create the stanza, and check archiving if it is on."""
    url = settings.require_database()
    server = pc.describe_server(url)
    _refuse_another_cluster(settings, server)
    passphrase = ensure_passphrase(vault)
    pc.write_config(settings, pc.render_config(settings, server, passphrase), _require_reachable)
    tool = tool_for(settings)
    tool.run("stanza-create", timeout=600)
    state = read_archiver(url)
    archiving = state.archives_with(pc.archive_command(settings))
    if archiving:
        tool.run("check", timeout=600)
    return InitResult(
        tool.config,
        tool.stanza,
        pc.server_settings_lines(settings),
        archiving,
    )


def take_base_backup(
    settings: Settings, kind: str, *, annotations: dict[str, str] | None = None
) -> BaseBackup:
    """Take a base backup (pgBackRest expires what PITR_RETENTION_DAYS no longer needs)."""
    if kind not in BACKUP_KINDS:
        raise ConfigError(f"unknown base backup type {kind!r}; use full, diff or incr")
    tool = tool_for(settings)
    before = {b.label for b in read_window(tool).backups}
    options = [f"--type={kind}"]
    options += [f"--annotation={key}={value}" for key, value in (annotations or {}).items()]
    tool.run("backup", *options)
    made = [b for b in read_window(tool).backups if b.label not in before]
    if not made:
        raise PitrFailed("pgbackrest backup succeeded but no new backup is listed")
    return made[-1]


def base_backup_for(settings: Settings, at: datetime) -> BaseBackup:
    """The base backup a recovery to `at` starts from, which a production request pins."""
    backup = read_window(tool_for(settings)).backup_for(at)
    if backup is None:
        raise ConfigError(
            f"no base backup ended before {at:%Y-%m-%d %H:%M:%S}Z; pick a time inside the "
            "window (pgvault pitr status)"
        )
    return backup


@dataclass(frozen=True)
class PitrStatus:
    """The repository's side (None when it cannot be read) and the server's."""

    window: Window | None
    repository_problem: str | None
    archiver: ArchiverState
    archive_command_expected: str

    def problems(self, max_lag: timedelta) -> list[tuple[str, str]]:
        """What an operator must hear about, as (kind, one line): the kind names the
        episode an alert belongs to, so each is alerted once while it lasts."""
        found = []
        archiver = self.archiver
        if not archiver.archives_with(self.archive_command_expected):
            found.append(
                (
                    "pitr_not_archiving",
                    "the server does not archive with pgvault's archive_command; add the lines "
                    "pgvault pitr init prints and restart PostgreSQL",
                )
            )
        if archiver.failing:
            found.append(
                (
                    "pitr_archive_failing",
                    f"WAL archiving is failing (last failure {archiver.last_failed_wal} at "
                    f"{archiver.last_failed_at:%Y-%m-%d %H:%M:%S}Z, {archiver.ready_count} "
                    f"segment(s) waiting); see {LOG_HINT}",
                )
            )
        lag = archiver.lag
        if lag is not None and lag > max_lag:
            found.append(
                (
                    "pitr_archive_lag",
                    f"the newest archived WAL is {int(lag.total_seconds() // 60)} minutes old "
                    f"(bound {int(max_lag.total_seconds() // 60)}) while WAL waits to be archived",
                )
            )
        if self.repository_problem is not None:
            found.append(
                (
                    "pitr_repository_unreadable",
                    f"the repository cannot be read: {self.repository_problem}",
                )
            )
        if self.window is not None:
            found += [
                ("pitr_archive_gap", f"the WAL archive has a gap: {gap}")
                for gap in self.window.gaps
            ]
            if not self.window.backups:
                found.append(
                    (
                        "pitr_no_base_backup",
                        "there is no base backup yet; run pgvault pitr backup --type full",
                    )
                )
        return found


def pitr_status(settings: Settings) -> PitrStatus:
    """Both sides, each read even when the other cannot be: an unreachable repository is
    exactly when the server's failing archiver must still be seen."""
    tool = tool_for(settings)
    window, problem = None, None
    try:
        window = read_window(tool)
    except PitrFailed as exc:
        problem = str(exc)
    return PitrStatus(
        window, problem, read_archiver(settings.require_database()), pc.archive_command(settings)
    )


def archive_alert_step(
    problems: list[tuple[str, str]], cursor: str | None
) -> tuple[list[Alert], str]:
    """One tick of the archive's episodes: an alert for each problem kind that begins, one
    resolved notice when all have ended, which resolves every kind the episode had (a kind
    that ended while another lasted included). The cursor holds the kinds active now and
    those of the episode; a cursor of the active kinds alone (as before) still reads."""
    active = {kind: message for kind, message in problems}
    saved = json.loads(cursor) if cursor else []
    before = set(saved["active"] if isinstance(saved, dict) else saved)
    episode = set(saved["episode"] if isinstance(saved, dict) else saved) | set(active)
    alerts = [
        Alert(kind, "fatal" if kind != "pitr_no_base_backup" else "warning", message)
        for kind, message in active.items()
        if kind not in before
    ]
    if before and not active:
        alerts.append(
            Alert(
                RESOLVED, "info", "WAL archiving is healthy again", resolves=tuple(sorted(episode))
            )
        )
        episode = set()
    return alerts, json.dumps({"active": sorted(active), "episode": sorted(episode)})
