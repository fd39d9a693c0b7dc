"""Do two databases hold the same data? Per table: row count and a content checksum; for
the whole database, also its owners, grants, policies, extensions, large objects (contents
included), comments, settings and roles (engine/postgres/shape.py).

The manual's "compare staging vs. production to confirm the fix". The checksum is a sum of
per-row 128-bit hashes of each row's text form: it needs no primary key, no sort and no
memory beyond one row, so it scans a large table at disk speed and is the same in both
databases however their rows are physically ordered. Output formats are pinned for the
session so equal values always print (and hash) alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pgvault_assets.engine.postgres import shape
from pgvault_assets.engine.postgres.postgres import connect, one_row, user_tables
from pgvault_assets.errors import ConfigError
from pgvault_assets.settings import DatabaseUrl

SESSION_SETUP = (
    "SET TIME ZONE 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'postgres'",
    "SET bytea_output = 'hex'",
    "SET extra_float_digits = 3",
)


@dataclass(frozen=True)
class TableDigest:
    table: str
    rows: int
    checksum: str


@dataclass(frozen=True)
class TableComparison:
    table: str
    source: TableDigest | None
    target: TableDigest | None

    @property
    def differs(self) -> bool:
        """A table missing on either side differs, whatever the other side holds."""
        return self.source is None or self.target is None or self.source != self.target


@dataclass(frozen=True)
class Comparison:
    tables: tuple[TableComparison, ...]
    # Only when the whole databases are compared (no tables named).
    sections: tuple[shape.SectionDifference, ...] = ()

    @property
    def differing(self) -> tuple[TableComparison, ...]:
        return tuple(t for t in self.tables if t.differs)

    @property
    def equal(self) -> bool:
        """Rows and the database around them; differences that are only said don't count."""
        return not self.differing and not any(shape.matters(d) for d in self.sections)


def pin_output_formats(conn: psycopg.Connection) -> None:
    for statement in SESSION_SETUP:
        conn.execute(statement)


def qualified(name: str) -> str:
    """`schema.table` as written by an operator; a bare name means the public schema."""
    return name if "." in name else f"public.{name}"


def table_digest(conn: psycopg.Connection, schema: str, table: str) -> TableDigest:
    query = sql.SQL(
        "SELECT count(*), "
        "coalesce(sum(('x' || substr(h, 1, 16))::bit(64)::bigint::numeric), 0), "
        "coalesce(sum(('x' || substr(h, 17, 16))::bit(64)::bigint::numeric), 0) "
        # ROW(t.*), not t: in a table with a column named t, `t` is that column alone.
        "FROM (SELECT md5(ROW(t.*)::text) AS h FROM {}.{} AS t) AS hashed"
    ).format(sql.Identifier(schema), sql.Identifier(table))
    count, high, low = one_row(conn, query)
    checksum = hashlib.sha256(f"{count}:{high}:{low}".encode()).hexdigest()[:32]
    return TableDigest(f"{schema}.{table}", int(count), checksum)


def table_digests(
    url: DatabaseUrl, tables: Iterable[str] | None = None
) -> tuple[dict[str, TableDigest], shape.Shape | None]:
    """Digests of the user tables of `url` (or only `tables`, absent ones left out), and,
    when no tables are named, the database's shape, all in one snapshot."""
    wanted = {qualified(t) for t in tables} if tables else None
    digests = {}
    with connect(url, autocommit=False) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        pin_output_formats(conn)
        for schema, table in user_tables(conn):
            name = f"{schema}.{table}"
            if wanted is None or name in wanted:
                digests[name] = table_digest(conn, schema, table)
        whole = shape.read_shape(conn, contents=True) if wanted is None else None
        conn.rollback()
    return digests, whole


def compare_databases(
    source: DatabaseUrl, target: DatabaseUrl, tables: Iterable[str] | None = None
) -> Comparison:
    """Compare every user table of both databases, sorted by name, and the databases'
    shapes; or only `tables`."""
    tables = list(tables or [])
    left, left_shape = table_digests(source, tables)
    right, right_shape = table_digests(target, tables)
    names = sorted(set(left) | set(right) | {qualified(t) for t in tables})
    if tables and not (set(left) | set(right)):
        raise ConfigError(
            f"none of the tables {', '.join(names)} exist in either database; name them as schema.table"
        )
    sections: tuple[shape.SectionDifference, ...] = ()
    if left_shape is not None and right_shape is not None:
        sections = tuple(shape.differences(left_shape, right_shape))
    return Comparison(
        tuple(TableComparison(name, left.get(name), right.get(name)) for name in names), sections
    )
