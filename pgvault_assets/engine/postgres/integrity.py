"""Checks of a restored (or live) database: is it whole and consistent?

Run after a restore to staging, before anyone trusts it: row counts against the backup's
manifest, the database's owners, grants, policies, extensions, large objects, comments,
settings and roles against the backup's record of them, sequences that would hand out ids already taken, foreign keys pointing at nothing,
and PostgreSQL's own verification of tables and indexes (amcheck), which leaves no trace.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from pgvault_assets.engine.postgres import shape
from pgvault_assets.engine.postgres.postgres import (
    connect,
    table_row_counts,
)
from pgvault_assets.engine.postgres.server_context import ServerContext
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.settings import DatabaseUrl


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str
    skipped: bool = False


def row_counts_match(conn: psycopg.Connection, manifest: Manifest) -> CheckResult:
    actual = table_row_counts(conn, own_rows=manifest.rows_exclude_children)
    expected = manifest.table_rows
    differing = [
        f"{table} ({expected.get(table, 'absent')} in backup, {actual.get(table, 'absent')} here)"
        for table in sorted(set(expected) | set(actual))
        if expected.get(table) != actual.get(table)
    ]
    if differing:
        return CheckResult(
            "row counts",
            False,
            f"{len(differing)} tables differ from the {manifest.date} backup: "
            + "; ".join(differing[:5]),
        )
    return CheckResult(
        "row counts",
        True,
        f"{len(expected)} tables, {sum(expected.values())} rows, as in the {manifest.date} backup",
    )


def shape_matches(
    conn: psycopg.Connection, manifest: Manifest, context: ServerContext | None
) -> list[CheckResult]:
    """One check per section of the database's shape, against what the backup recorded."""
    if context is None:
        return [
            CheckResult(
                "owners, grants, settings, roles",
                True,
                f"the {manifest.date} backup predates pgvault recording them",
                skipped=True,
            )
        ]
    recorded = shape.recorded_shape(context)
    here = shape.read_shape(conn)
    found = {d.section: d for d in shape.differences(recorded, here)}
    results = []
    for section in shape.SECTIONS:
        if section not in recorded:
            results.append(
                CheckResult(
                    section,
                    True,
                    f"the {manifest.date} backup predates pgvault recording them",
                    skipped=True,
                )
            )
        elif section not in found:
            results.append(
                CheckResult(
                    section,
                    True,
                    f"{len(recorded[section])} as in the {manifest.date} backup",
                )
            )
        elif not shape.matters(found[section]):
            results.append(
                CheckResult(
                    section,
                    True,
                    "as in the backup but for: "
                    + found[section].describe(f"{manifest.date} backup", "here"),
                )
            )
        else:
            results.append(
                CheckResult(
                    section, False, found[section].describe(f"{manifest.date} backup", "here")
                )
            )
    return results


def sequences_ahead_of_rows(conn: psycopg.Connection) -> CheckResult:
    """A sequence behind its column's maximum would make the next insert fail on a duplicate key."""
    owned = conn.execute(
        """
        SELECT sn.nspname, s.relname, tn.nspname, t.relname, a.attname
        FROM pg_depend d
        JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
        JOIN pg_namespace sn ON sn.oid = s.relnamespace
        JOIN pg_class t ON t.oid = d.refobjid
        JOIN pg_namespace tn ON tn.oid = t.relnamespace
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
        WHERE d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
        ORDER BY 1, 2
        """
    ).fetchall()
    behind = []
    for seq_schema, seq, schema, table, column in owned:
        seq_state = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}.{}").format(
                sql.Identifier(seq_schema), sql.Identifier(seq)
            )
        ).fetchone()
        top = conn.execute(
            sql.SQL("SELECT max({}) FROM {}.{}").format(
                sql.Identifier(column), sql.Identifier(schema), sql.Identifier(table)
            )
        ).fetchone()
        if seq_state is None or top is None or top[0] is None:
            continue
        next_value = seq_state[0] + (1 if seq_state[1] else 0)
        if next_value <= top[0]:
            behind.append(
                f"{seq_schema}.{seq} would give {next_value}, but {schema}.{table}.{column} has {top[0]}"
            )
    if behind:
        return CheckResult("sequences", False, "; ".join(behind[:5]))
    return CheckResult(
        "sequences",
        True,
        f"each of {len(owned)} owned sequences will give a value above its column's largest",
    )


def foreign_keys_without_orphans(conn: psycopg.Connection) -> CheckResult:
    constraints = conn.execute(
        """
        SELECT c.conname, cn.nspname, cl.relname, pn.nspname, pl.relname,
               array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
               array(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)
        FROM pg_constraint c
        JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_namespace cn ON cn.oid = cl.relnamespace
        JOIN pg_class pl ON pl.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = pl.relnamespace
        WHERE c.contype = 'f'
        ORDER BY 2, 3, 1
        """
    ).fetchall()
    orphans = []
    for name, schema, table, ref_schema, ref_table, columns, ref_columns in constraints:
        child = sql.SQL(", ").join(sql.SQL("c.{}").format(sql.Identifier(col)) for col in columns)
        parent = sql.SQL(", ").join(
            sql.SQL("p.{}").format(sql.Identifier(col)) for col in ref_columns
        )
        not_null = sql.SQL(" AND ").join(
            sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(col)) for col in columns
        )
        query = sql.SQL(
            "SELECT count(*) FROM {}.{} c WHERE {} AND NOT EXISTS "
            "(SELECT 1 FROM {}.{} p WHERE ({}) = ({}))"
        ).format(
            sql.Identifier(schema),
            sql.Identifier(table),
            not_null,
            sql.Identifier(ref_schema),
            sql.Identifier(ref_table),
            parent,
            child,
        )
        row = conn.execute(query).fetchone()
        if row and row[0]:
            orphans.append(f"{schema}.{table} has {row[0]} rows whose {name} points at nothing")
    if orphans:
        return CheckResult("foreign keys", False, "; ".join(orphans[:5]))
    return CheckResult("foreign keys", True, f"{len(constraints)} foreign keys, no orphaned rows")


INDEXES = "indexes (amcheck)"

_AMCHECK_SCHEMA = "pgvault_amcheck"

_TABLES = """
    SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't' AND c.relispopulated
    ORDER BY 2, 3
"""

_BTREE_INDEXES = """
    SELECT i.indexrelid, n.nspname, ic.relname
    FROM pg_index i
    JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
    JOIN pg_am am ON am.oid = ic.relam JOIN pg_class t ON t.oid = i.indrelid
    WHERE am.amname = 'btree' AND ic.relkind = 'i' AND i.indisvalid AND i.indisready
      AND ic.relpersistence <> 't' AND t.relispopulated
    ORDER BY 2, 3
"""


def _amcheck_schema(conn: psycopg.Connection, *, install: bool) -> str | None:
    """The schema holding amcheck's functions, creating it (uncommitted) if allowed; None if
    amcheck cannot be had here."""
    found = conn.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'amcheck'"
    ).fetchone()
    if found is not None:
        return str(found[0])
    if not install:
        return None
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(_AMCHECK_SCHEMA)))
    conn.execute(
        sql.SQL("CREATE EXTENSION amcheck SCHEMA {}").format(sql.Identifier(_AMCHECK_SCHEMA))
    )
    return _AMCHECK_SCHEMA


def _verify_all(conn: psycopg.Connection, schema: str) -> tuple[int, int, list[str]]:
    """Every table's pages and every B-tree index against its table; each in a savepoint, so
    one corrupt relation does not hide the next."""
    amcheck = sql.Identifier(schema)
    heap = sql.SQL(
        "SELECT blkno, msg FROM {}.verify_heapam(%s::oid::regclass, check_toast => true)"
    ).format(amcheck)
    btree = sql.SQL(
        "SELECT NULL::bigint, NULL::text FROM {}.bt_index_check(%s::oid::regclass, true)"
    ).format(amcheck)
    tables = conn.execute(_TABLES).fetchall()
    indexes = conn.execute(_BTREE_INDEXES).fetchall()
    problems: list[str] = []

    def verify(query: sql.Composed, oid: int, name: str) -> None:
        try:
            with conn.transaction():
                found = conn.execute(query, (oid,)).fetchall()
        except psycopg.errors.InsufficientPrivilege:
            raise
        except psycopg.Error as exc:
            problems.append(f"{name}: {str(exc).strip().splitlines()[0]}")
            return
        problems.extend(f"{name} block {block}: {message}" for block, message in found if message)

    for oid, nspname, relname in tables:
        verify(heap, oid, f"{nspname}.{relname}")
    for oid, nspname, relname in indexes:
        verify(btree, oid, f"{nspname}.{relname}")
    return len(tables), len(indexes), problems


def indexes_verified(url: DatabaseUrl, *, install_amcheck: bool) -> CheckResult:
    """amcheck verifies every table's pages and every B-tree index against its table
    (what `pg_amcheck --heapallindexed` checks), leaving the database as it found it.

    It runs in one transaction that is always rolled back. Creating an extension is
    transactional in PostgreSQL, so the amcheck this check creates (on staging, or a drill's
    scratch database) goes with the rollback: when the check passes, fails, raises, or its
    process is killed (the server aborts an open transaction whose client is gone). The
    external `pg_amcheck` could not do this: it opens its own connections, so it needs amcheck
    committed beforehand and dropped afterwards, and a check killed in between would leave it
    behind for `compare` to find. An amcheck that was already installed is used, never dropped.
    """
    with connect(url, autocommit=False) as conn:
        try:
            schema = _amcheck_schema(conn, install=install_amcheck)
            if schema is None:
                return CheckResult(
                    INDEXES, True, "the amcheck extension is not installed here", skipped=True
                )
            tables, indexes, problems = _verify_all(conn, schema)
        except psycopg.errors.InsufficientPrivilege:
            return CheckResult(
                INDEXES, True, "this role may not create or run amcheck here", skipped=True
            )
        except (psycopg.errors.UndefinedFile, psycopg.errors.FeatureNotSupported):
            return CheckResult(
                INDEXES, True, "amcheck is not available on this server", skipped=True
            )
        finally:
            conn.rollback()
    if problems:
        return CheckResult(INDEXES, False, f"{len(problems)} corrupt: " + "; ".join(problems[:5]))
    return CheckResult(
        INDEXES, True, f"{tables} tables and {indexes} B-tree indexes match each other"
    )


def check_database_integrity(
    url: DatabaseUrl,
    manifest: Manifest | None,
    *,
    context: ServerContext | None = None,
    install_amcheck: bool = False,
) -> list[CheckResult]:
    """Run every check; a failing check never stops the others. `context` is the backup's
    server context, holding what the backup recorded besides its rows."""
    results = []
    with connect(url) as conn:
        if manifest is not None:
            results.append(row_counts_match(conn, manifest))
            results.extend(shape_matches(conn, manifest, context))
        else:
            results.append(
                CheckResult("row counts", True, "no backup to compare with", skipped=True)
            )
        results.append(sequences_ahead_of_rows(conn))
        results.append(foreign_keys_without_orphans(conn))
    results.append(indexes_verified(url, install_amcheck=install_amcheck))
    return results
