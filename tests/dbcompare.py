"""`database_snapshot(url)`: a plain-data picture of a database, for restore-equals-source checks.

`assert database_snapshot(restored) == database_snapshot(source)` proves the two agree row by row
and object by object. Rows are compared as their text form, sorted in Python so the result does
not depend on either database's collation; session settings that change text output are pinned.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

# Schemas that belong to PostgreSQL itself, never to the application.
_USER_SCHEMAS = "n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'"

# Fixed output formats, so two servers (or two sessions) print the same values identically.
_SESSION_SETUP = (
    "SET TIME ZONE 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'postgres'",
    "SET bytea_output = 'hex'",
    "SET extra_float_digits = 1",
    "SET search_path = pg_catalog",  # object definitions then always come schema-qualified
)


def _fetch(conn: psycopg.Connection[Any], query: str, params: Any = None) -> list[tuple[Any, ...]]:
    return list(conn.execute(query, params).fetchall())


def _relations(conn: psycopg.Connection[Any], kinds: str) -> list[tuple[int, str, str, str]]:
    return [
        (oid, schema, name, kind)
        for oid, schema, name, kind in _fetch(
            conn,
            f"""
            SELECT c.oid::int, n.nspname, c.relname, c.relkind::text
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind::text = ANY(%s) AND {_USER_SCHEMAS}
            ORDER BY n.nspname, c.relname
            """,
            [list(kinds)],
        )
    ]


def _columns(conn: psycopg.Connection[Any], oid: int) -> list[dict[str, Any]]:
    rows = _fetch(
        conn,
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               a.attgenerated::text, a.attidentity::text, pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        [oid],
    )
    return [
        {
            "name": name,
            "type": type_,
            "not_null": not_null,
            "generated": generated or None,  # 's' for GENERATED ALWAYS AS (...) STORED
            "identity": identity or None,
            "default_or_expression": expr,
        }
        for name, type_, not_null, generated, identity, expr in rows
    ]


def _table_rows(conn: psycopg.Connection[Any], schema: str, name: str) -> list[str]:
    # ROW(t.*), not t: in a table with a column named t, `t` is that column, not the row.
    query = sql.SQL("SELECT ROW(t.*)::text FROM {}.{} AS t").format(
        sql.Identifier(schema), sql.Identifier(name)
    )
    return sorted(row[0] for row in conn.execute(query))


def _tables(conn: psycopg.Connection[Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    tables: dict[str, Any] = {}
    rows: dict[str, list[str]] = {}
    for oid, schema, name, kind in _relations(conn, "rpm"):
        key = f"{schema}.{name}"
        constraints = _fetch(
            conn,
            """
            SELECT conname, pg_get_constraintdef(oid, true) FROM pg_constraint
            WHERE conrelid = %s ORDER BY conname
            """,
            [oid],
        )
        indexes = _fetch(
            conn,
            """
            SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x
            JOIN pg_class i ON i.oid = x.indexrelid
            WHERE x.indrelid = %s ORDER BY i.relname
            """,
            [oid],
        )
        triggers = _fetch(
            conn,
            """
            SELECT tgname, pg_get_triggerdef(oid, true) FROM pg_trigger
            WHERE tgrelid = %s AND NOT tgisinternal ORDER BY tgname
            """,
            [oid],
        )
        tables[key] = {
            "kind": {"r": "table", "p": "partitioned table", "m": "materialized view"}[kind],
            "columns": _columns(conn, oid),
            "constraints": dict(constraints),
            "indexes": dict(indexes),
            "triggers": dict(triggers),
        }
        if kind == "m":
            tables[key]["definition"] = conn.execute(
                "SELECT pg_get_viewdef(%s::oid, true)", [oid]
            ).fetchone()[0]
        if kind != "p":  # a partitioned table's rows are its partitions' rows
            rows[key] = _table_rows(conn, schema, name)
    return tables, rows


def _views(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    views: dict[str, Any] = {}
    for oid, schema, name, _kind in _relations(conn, "v"):
        definition = conn.execute("SELECT pg_get_viewdef(%s::oid, true)", [oid]).fetchone()[0]
        views[f"{schema}.{name}"] = {"columns": _columns(conn, oid), "definition": definition}
    return views


def _functions(conn: psycopg.Connection[Any]) -> dict[str, str]:
    rows = _fetch(
        conn,
        f"""
        SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid)
               || ')',
               CASE WHEN p.prokind = 'a' THEN 'aggregate'
                    ELSE pg_get_functiondef(p.oid) END
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {_USER_SCHEMAS}
        """,
    )
    return dict(sorted(rows))


def _enums(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    rows = _fetch(
        conn,
        f"""
        SELECT n.nspname || '.' || t.typname,
               array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
        FROM pg_type t
        JOIN pg_namespace n ON n.oid = t.typnamespace
        JOIN pg_enum e ON e.enumtypid = t.oid
        WHERE {_USER_SCHEMAS}
        GROUP BY 1
        """,
    )
    return dict(sorted(rows))


def _sequences(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    sequences: dict[str, dict[str, Any]] = {}
    for oid, schema, name, _kind in _relations(conn, "S"):
        params = conn.execute(
            """
            SELECT format_type(seqtypid, NULL), seqstart, seqincrement, seqmin, seqmax,
                   seqcache, seqcycle
            FROM pg_sequence WHERE seqrelid = %s
            """,
            [oid],
        ).fetchone()
        state = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(name)
            )
        ).fetchone()
        type_, start, increment, minimum, maximum, cache, cycle = params
        sequences[f"{schema}.{name}"] = {
            "type": type_,
            "start": start,
            "increment": increment,
            "min": minimum,
            "max": maximum,
            "cache": cache,
            "cycle": cycle,
            "last_value": state[0],
            "is_called": state[1],
        }
    return sequences


def _schemas(conn: psycopg.Connection[Any]) -> list[str]:
    return [
        row[0]
        for row in _fetch(
            conn, f"SELECT nspname FROM pg_namespace n WHERE {_USER_SCHEMAS} ORDER BY 1"
        )
    ]


def database_snapshot(url: str) -> dict[str, Any]:
    """Everything that must survive a dump and restore, as comparable plain data.

    Keys: schemas, tables (columns with types, defaults and generated expressions, constraints,
    indexes, triggers), views, functions, enums, sequences (parameters, last_value, is_called)
    and rows (every user table's rows as sorted text).
    """
    with psycopg.connect(url, connect_timeout=5) as conn:
        # One read-only snapshot for the whole picture, so concurrent writes cannot tear it.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        for statement in _SESSION_SETUP:
            conn.execute(statement)
        tables, rows = _tables(conn)
        return {
            "schemas": _schemas(conn),
            "tables": tables,
            "views": _views(conn),
            "functions": _functions(conn),
            "enums": _enums(conn),
            "sequences": _sequences(conn),
            "rows": rows,
        }
