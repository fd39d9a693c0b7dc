"""pgBackRest's configuration for one server, and the archive_command that uses it.

pgBackRest archives per server: each server of the fleet has its own stanza, configuration,
lock and log folders and repository, and every database of that server recovers from it.

The archive command runs in the server's environment, not pgvault's, so everything
pgBackRest needs (repository, credentials, passphrase) is in the configuration file, which
is 0600 and owned by the `postgres` OS user: the only place the passphrase is in plaintext.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pgvault_assets.engine.basics import names
from pgvault_assets.engine.postgres.postgres import connect, one_row
from pgvault_assets.errors import ConfigError
from pgvault_assets.settings import DatabaseUrl, Settings

OS_USER = "postgres"
CIPHER_TYPE = "aes-256-cbc"
ARCHIVE_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Server:
    """Where pgBackRest finds the server: its data directory and socket, on this host."""

    data_directory: Path
    port: int
    socket_directory: Path
    user: str
    major: int
    system_id: int


def describe_server(url: DatabaseUrl) -> Server:
    """Ask the server where it keeps its data and socket (pgBackRest reads the files and
    connects through the socket, so it runs on the database's own host)."""
    with connect(url) as conn:
        data, port, sockets, user, version, system_id = one_row(
            conn,
            "SELECT current_setting('data_directory'), current_setting('port')::int, "
            "current_setting('unix_socket_directories'), current_user, "
            "current_setting('server_version_num')::int, "
            "(SELECT system_identifier FROM pg_control_system())",
        )
    socket = next((s.strip() for s in sockets.split(",") if s.strip().startswith("/")), None)
    if socket is None:
        raise ConfigError(
            f"{url} listens on no Unix socket (unix_socket_directories is {sockets!r}); "
            "pgBackRest connects through one: set unix_socket_directories"
        )
    return Server(Path(data), port, Path(socket), user, version // 10000, int(system_id))


def pgbackrest_binary() -> str:
    found = shutil.which("pgbackrest")
    if found is None:
        raise ConfigError(
            "pgbackrest is not installed; install it (apt-get install pgbackrest, or scripts/setup.sh)"
        )
    return found


def archive_command(settings: Settings) -> str:
    """The server's archive_command: pgBackRest's archive-push, bounded, because a push to an
    endpoint that accepts and never answers would otherwise hold the archiver for minutes
    while WAL piles up on the server."""
    stanza = names.pitr_stanza(settings)
    return " ".join(
        [
            "timeout",
            str(settings.pitr.archive_push_timeout_seconds),
            shlex.quote(pgbackrest_binary()),
            shlex.quote(f"--config={stanza.config_file}"),
            shlex.quote(f"--stanza={stanza.name}"),
            "archive-push",
            "%p",
        ]
    )


def server_settings_lines(settings: Settings) -> list[str]:
    """The postgresql.conf lines that turn archiving on (archive_mode needs a restart)."""
    command = archive_command(settings).replace("'", "''")
    return [
        "archive_mode = on",
        f"archive_command = '{command}'",
        f"archive_timeout = {ARCHIVE_TIMEOUT_SECONDS}",
    ]


def _repository_lines(settings: Settings) -> list[str]:
    pitr, stanza = settings.pitr, names.pitr_stanza(settings)
    if not settings.uses_s3:
        return ["repo1-type=posix", f"repo1-path={stanza.repo_dir}"]
    endpoint = pitr.s3_endpoint or f"s3.{pitr.s3_region}.amazonaws.com"
    host, _, port = endpoint.partition(":")
    lines = [
        "repo1-type=s3",
        f"repo1-path={stanza.s3_path}",
        f"repo1-s3-bucket={settings.s3_bucket}",
        f"repo1-s3-endpoint={host}",
        f"repo1-s3-region={pitr.s3_region}",
        f"repo1-s3-uri-style={pitr.s3_uri_style}",
    ]
    if port:
        lines.append(f"repo1-storage-port={port}")
    if pitr.s3_ca_file is not None:
        lines.append(f"repo1-storage-ca-file={pitr.s3_ca_file}")
    if settings.kms_key_id:
        lines.append(f"repo1-s3-kms-key-id={settings.kms_key_id}")
    if pitr.s3_access_key and pitr.s3_secret_key:
        lines += [
            "repo1-s3-key-type=shared",
            f"repo1-s3-key={pitr.s3_access_key}",
            f"repo1-s3-key-secret={pitr.s3_secret_key}",
        ]
    else:
        lines.append("repo1-s3-key-type=auto")
    return lines


def render_config(settings: Settings, server: Server, passphrase: str) -> str:
    pitr, stanza = settings.pitr, names.pitr_stanza(settings)
    lines = [
        "# Written by pgvault pitr init; run it again rather than editing this file.",
        "[global]",
        *_repository_lines(settings),
        f"repo1-cipher-type={CIPHER_TYPE}",
        f"repo1-cipher-pass={passphrase}",
        # Small files bundled into few objects: a base backup is hundreds of S3 requests, not
        # one per file of the data directory.
        "repo1-bundle=y",
        "repo1-retention-full-type=time",
        f"repo1-retention-full={pitr.retention_days}",
        f"io-timeout={pitr.io_timeout_seconds}",
        f"lock-path={stanza.directory / 'lock'}",
        f"log-path={stanza.directory / 'log'}",
        "log-level-console=warn",
        "log-level-file=info",
        "start-fast=y",
        "",
        f"[{stanza.name}]",
        f"pg1-path={server.data_directory}",
        f"pg1-port={server.port}",
        f"pg1-socket-path={server.socket_directory}",
        f"pg1-user={server.user}",
        "",
    ]
    return "\n".join(lines)


def _owner_ids() -> tuple[int, int] | None:
    """Whom pgBackRest's files must belong to: `postgres`, chowned as root, or pgvault's own
    user when pgvault already runs as postgres; None means no change of owner is needed."""
    try:
        entry = pwd.getpwnam(OS_USER)
    except KeyError:
        raise ConfigError(
            "there is no postgres OS user; run pgvault pitr on the database server's host"
        ) from None
    if os.geteuid() == entry.pw_uid:
        return None
    if os.geteuid() != 0:
        raise ConfigError(
            "pgBackRest runs as the postgres OS user: run pgvault pitr as root or as postgres"
        )
    return entry.pw_uid, entry.pw_gid


def _owned_dir(path: Path, owner: tuple[int, int] | None) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if owner is not None:
        os.chown(path, *owner)


def write_config(
    settings: Settings, text: str, readable: Callable[[Path], None] | None = None
) -> Path:
    """Write the configuration 0600 for `postgres`, atomically, with the folders it names.

    `readable` is called with the file while it is still empty: if it refuses (postgres
    cannot reach the folder), the file is removed having held no passphrase."""
    stanza = names.pitr_stanza(settings)
    owner = _owner_ids()
    root = settings.pitr.directory
    between = [folder for folder in reversed(stanza.directory.parents) if root in folder.parents]
    for folder in dict.fromkeys((root, *between, stanza.directory)):
        _owned_dir(folder, owner)
    for sub in ("lock", "log", *(() if settings.uses_s3 else ("repo",))):
        _owned_dir(stanza.directory / sub, owner)
    fd, temporary = tempfile.mkstemp(prefix=".pgbackrest-", dir=stanza.directory)
    try:
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o600)
            if owner is not None:
                os.fchown(out.fileno(), *owner)
            if readable is not None:
                readable(Path(temporary))
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, stanza.config_file)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return stanza.config_file
