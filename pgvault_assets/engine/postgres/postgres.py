"""PostgreSQL processes and connections: pg_dump and psql, versions, maintenance queries.

Passwords reach pg_dump and psql only through the PGPASSWORD environment variable, never
on a command line (where `ps` would show them) and never in an error message.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
from psycopg import sql

from pgvault_assets.engine.basics.names import database_beside
from pgvault_assets.errors import ConfigError, PgvaultError
from pgvault_assets.settings import DatabaseUrl


class DatabaseUnavailable(PgvaultError):
    """The database could not be reached or refused the connection."""


class DatabaseRefused(DatabaseUnavailable, ConfigError):
    """The server answered and said no for good (no such database or role, bad password,
    no pg_hba.conf entry): retrying cannot help, so the backup's retry policy stops at once."""


_REFUSED_FOR_GOOD = re.compile(
    r"does not exist|password authentication failed|no pg_hba\.conf entry|"
    r"permission denied for database|authentication failed for user",
    re.I,
)


# Each connection parameter a URL may carry that libpq also reads from the environment
# (PostgreSQL's "Environment Variables" page), so pg_dump and psql connect as psycopg does: a
# `hostaddr`, client certificate or `target_session_attrs` is not lost on the way. TCP
# keepalives and `tcp_user_timeout` have no variable; the tools keep libpq's defaults for them.
_LIBPQ_VARIABLES = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "require_auth": "PGREQUIREAUTH",
    "channel_binding": "PGCHANNELBINDING",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "sslmode": "PGSSLMODE",
    "requiressl": "PGREQUIRESSL",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcertmode": "PGSSLCERTMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "gssdelegation": "PGGSSDELEGATION",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "client_encoding": "PGCLIENTENCODING",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}


def libpq_env(url: DatabaseUrl) -> dict[str, str]:
    """The URL as libpq environment variables, so no secret is on a command line."""
    parts = urlsplit(url.secret)
    env = {"PGCONNECT_TIMEOUT": "10"}
    if parts.hostname:
        env["PGHOST"] = unquote(parts.hostname)
    if parts.port:
        env["PGPORT"] = str(parts.port)
    if parts.username:
        env["PGUSER"] = unquote(parts.username)
    if url.password:
        env["PGPASSWORD"] = url.password
    for key, value in parse_qsl(parts.query):
        if key in _LIBPQ_VARIABLES:
            env[_LIBPQ_VARIABLES[key]] = value
    env["PGDATABASE"] = url.dbname  # the database the URL names, or the one pgvault chose
    return env


def tool_env(url: DatabaseUrl) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(libpq_env(url))
    return env


# TCP keepalives for a connection that idles for a long time on purpose (one holding a lock):
# a dead peer is noticed in about a minute, and no middlebox drops it for being idle.
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


@contextlib.contextmanager
def connection_loss_raises(error: type[PgvaultError], during: str, outcome: str) -> Iterator[None]:
    """A PostgreSQL error ends `during` with one line that says what happened and what to do,
    not a trace: a lost connection, a permission, a missing object, a lock or statement
    timeout and a full disk each read differently."""
    try:
        yield
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise error(f"{describe_failure(exc, during)} ({reason}); {outcome}") from None


# SQLSTATE classes and codes, and what an operator does about each.
_FAILURES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("08", "57P01", "57P02", "57P03"),
        "the database connection was lost during {during}: "
        "the server restarted or ended the session; a retry goes on once it is back",
    ),
    (
        ("42501",),
        "PostgreSQL denied a permission during {during}: grant the URL's role what the "
        "message names",
    ),
    (
        ("42P01", "42704", "42883", "3D000", "3F000"),
        "an object {during} needs does not exist: "
        "check the URL's database and what the message names",
    ),
    (
        ("55P03", "57014", "40P01"),
        "a lock or statement timeout ended {during}: another session "
        "held what it needed; a retry later goes through",
    ),
    (("53100",), "the database server's disk is full during {during}: free space on it"),
    (
        ("53",),
        "the database server ran out of resources during {during}: check its memory "
        "and connection limit",
    ),
)


def describe_failure(exc: psycopg.Error, during: str) -> str:
    """What kind of failure `exc` is, from its SQLSTATE (no SQLSTATE: the link itself)."""
    code = exc.sqlstate or ("08" if isinstance(exc, psycopg.OperationalError) else "")
    for prefixes, text in _FAILURES:
        if code.startswith(prefixes):
            return text.format(during=during)
    return f"PostgreSQL refused {during}"


# pgvault's own sessions set what they need instead of inheriting the role's or database's
# defaults: a 30 s statement_timeout set for the application must not fail a long restore check,
# nor an idle-in-transaction limit end the snapshot a dump reads.
SESSION_OPTIONS = "-c statement_timeout=0 -c idle_in_transaction_session_timeout=0"


@contextlib.contextmanager
def connect(
    url: DatabaseUrl,
    *,
    autocommit: bool = True,
    keepalive: bool = False,
    application_name: str | None = None,
) -> Iterator[psycopg.Connection]:
    named: dict[str, Any] = (
        {} if application_name is None else {"application_name": application_name}
    )
    try:
        conn = psycopg.connect(
            url.secret,
            autocommit=autocommit,
            connect_timeout=10,
            options=SESSION_OPTIONS,
            **(KEEPALIVES if keepalive else {}),
            **named,
        )
    except psycopg.OperationalError as exc:
        reason = _first_line(str(exc)).replace(url.password or "\0", "***")
        if _REFUSED_FOR_GOOD.search(reason):
            raise DatabaseRefused(
                f"{url} refused the connection ({reason}); check the URL's database, user and "
                "password and the server's pg_hba.conf (retrying will not help)"
            ) from None
        raise DatabaseUnavailable(
            f"cannot connect to {url} ({reason}); check that the server is up and the URL is right"
        ) from None
    try:
        yield conn
    finally:
        conn.close()


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # libpq prefixes "connection to server at ... failed:"; the reason is the interesting part.
    return lines[-1] if lines else "unknown error"


def one_row(conn: psycopg.Connection, query: Any, params: Any = None) -> tuple[Any, ...]:
    """The single row a query always returns (an aggregate, a setting): none is an error of
    the server's, said as such rather than an assert that `python -O` would remove."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise PgvaultError(f"PostgreSQL returned no row for {str(query)[:60]!r}")
    return tuple(row)


def server_version(conn: psycopg.Connection) -> tuple[int, str]:
    row = one_row(conn, "SELECT current_setting('server_version_num')::int, version()")
    return row[0] // 10000, row[1].split(" on ")[0]


def find_tool(name: str, server_major: int) -> str:
    """The tool matching the server's major version where Debian installs several, else PATH."""
    candidate = Path(f"/usr/lib/postgresql/{server_major}/bin/{name}")
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise ConfigError(
            f"{name} is not installed; install the PostgreSQL {server_major} client tools"
        )
    return found


def tool_version(path: str) -> tuple[int, str]:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"(\d+)(?:\.(\d+))?", out)
    if not match:
        raise ConfigError(f"cannot read the version of {path}")
    return int(match.group(1)), out.strip()


def check_tool_fits_server(name: str, server_major: int) -> tuple[str, str]:
    path = find_tool(name, server_major)
    major, text = tool_version(path)
    if major < server_major:
        raise ConfigError(
            f"{name} {major} is older than the server ({server_major}) and cannot dump it; "
            f"install postgresql-client-{server_major}"
        )
    return path, text


def tool_reason(lines: Iterable[str], fallback: str) -> str:
    """A tool's reason: its first ERROR or FATAL line, else its last line, else `fallback`."""
    said = [line.strip() for line in lines if line.strip()]
    reason = next((line for line in said if "ERROR" in line or "FATAL" in line), None)
    return (reason or (said[-1] if said else fallback)).removeprefix("psql:")


def user_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """Ordinary tables outside the system schemas and not owned by extensions."""
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r'
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d
                          WHERE d.objid = c.oid AND d.deptype = 'e')
        ORDER BY 1, 2
        """
    ).fetchall()
    return [(schema, table) for schema, table in rows]


def table_row_counts(
    conn: psycopg.Connection, *, own_rows: bool = True, known: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Rows per user table: each table's own (`own_rows`, as a dump's COPY holds them), or
    with its inheritance children's, as backups before dump-stream counts recorded them.
    `known`: counts already had (what a restore's COPY loaded), not counted again."""
    counts = {}
    only = sql.SQL("ONLY " if own_rows else "")
    for schema, table in user_tables(conn):
        if known and f"{schema}.{table}" in known:
            counts[f"{schema}.{table}"] = known[f"{schema}.{table}"]
            continue
        query = sql.SQL("SELECT count(*) FROM {}{}.{}").format(
            only, sql.Identifier(schema), sql.Identifier(table)
        )
        row = conn.execute(query).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


def database_exists(maintenance: psycopg.Connection, name: str) -> bool:
    return (
        maintenance.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        is not None
    )


def terminate_connections(maintenance: psycopg.Connection, name: str) -> None:
    maintenance.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )


def drop_database(maintenance: psycopg.Connection, name: str) -> None:
    maintenance.execute(
        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    )


def previous_databases(url: DatabaseUrl) -> list[str]:
    """Databases kept by earlier restores of `url`'s database, newest first."""
    prefix = database_beside(url.dbname, "pre_restore", "0" * 14)[:-14]
    with connect(url.with_dbname("postgres")) as maintenance:
        rows = maintenance.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY datname DESC",
            (prefix,),
        ).fetchall()
    return [row[0] for row in rows]


def lock_holders(url: DatabaseUrl, relation: str) -> str:
    """Who holds a lock on `relation` now, for the line that says why a dump gave up."""
    try:
        with connect(url) as conn:
            rows = conn.execute(
                """
                SELECT DISTINCT l.pid, l.mode, coalesce(nullif(a.application_name, ''), '?'),
                       a.state, left(regexp_replace(a.query, '\\s+', ' ', 'g'), 80)
                FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                WHERE l.granted AND l.relation = to_regclass(%s) AND l.pid <> pg_backend_pid()
                """,
                (relation,),
            ).fetchall()
    except (psycopg.Error, PgvaultError):
        return "a session pgvault could not look up"
    if not rows:
        return "a session that has let go since"
    return "; ".join(
        f"PID {pid} ({application}, {state}) holding {mode}: {query}"
        for pid, mode, application, state, query in rows
    )
