"""Row counts come from the dump's own COPY blocks: exact, whatever the names, at any chunking,
and the backup reads each table once (pg_dump's COPY), never a second `count(*)` scan."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgvault_assets.engine.postgres.postgres import find_tool, tool_env
from pgvault_assets.engine.vault.copy_rows import CopyRowCounter
from pgvault_assets.settings import DatabaseUrl
from tests.conftest import admin_connect
from tests.test_engine.helpers import back_up

# Names pg_dump must quote: spaces, capitals, a double quote, a dot, a keyword, non-ASCII.
AWKWARD_NAMES = '''
    CREATE SCHEMA "Sales.EU";
    CREATE TABLE "Sales.EU"."Order ""Lines""" (id int, note text);
    INSERT INTO "Sales.EU"."Order ""Lines""" SELECT g, E'a\\nb\\\\.' FROM generate_series(1, 7) g;
    CREATE TABLE public."select" (x int);
    INSERT INTO public."select" VALUES (1), (2);
    CREATE TABLE public."جدول" (t text);
    INSERT INTO public."جدول" VALUES (E'\\\\.'), (E'\\n\\\\.\\n'), (NULL);
    CREATE TABLE public.no_columns ();
    INSERT INTO public.no_columns DEFAULT VALUES;
    INSERT INTO public.no_columns DEFAULT VALUES;
    CREATE TABLE public.measurements (day date, v int) PARTITION BY RANGE (day);
    CREATE TABLE public.measurements_2025 PARTITION OF public.measurements
        FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
    INSERT INTO public.measurements SELECT '2025-03-01', g FROM generate_series(1, 5) g;
'''


def _real_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            """
            SELECT n.nspname, c.relname FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            """
        ).fetchall()
        return {
            f"{schema}.{table}": conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table)
                )
            ).fetchone()[0]
            for schema, table in tables
        }


@pytest.fixture
def awkward_names_database(awkward_database: str) -> str:
    with psycopg.connect(awkward_database, autocommit=True) as conn:
        conn.execute(AWKWARD_NAMES)
    return awkward_database


def _plain_dump(url: str) -> bytes:
    return subprocess.run(
        [find_tool("pg_dump", 15), "--format=plain", "--no-password"],
        env=tool_env(DatabaseUrl(url)),
        capture_output=True,
        check=True,
    ).stdout


def _counted(chunks: Iterable[bytes]) -> dict[str, int]:
    counter = CopyRowCounter()
    for chunk in chunks:
        counter.feed(chunk)
    return counter.counts


def test_counts_from_one_byte_chunks_match_the_real_counts(awkward_names_database):
    dump = _plain_dump(awkward_names_database)

    counted = _counted(dump[i : i + 1] for i in range(len(dump)))

    assert counted == _real_counts(awkward_names_database)
    assert counted['Sales.EU.Order "Lines"'] == 7 and counted["public.no_columns"] == 2


def test_every_chunk_boundary_gives_the_same_counts():
    dump = (
        b"SET x = 1;\nCOPY public.t (a) FROM stdin;\n1\n\\\\.\n\\N\n\\.\n"
        b"CREATE FUNCTION f() RETURNS void AS $$\nCOPY public.x TO stdout;\n$$;\n"
        b'COPY "a b"."c""d" (a) FROM stdin;\n\\.\nCOPY public.e  FROM stdin;\n\n\\.\n'
    )
    expected = {"public.t": 3, 'a b.c"d': 0, "public.e": 1}

    for first in range(len(dump)):
        for second in range(first, len(dump)):
            chunks = [dump[:first], dump[first:second], dump[second:]]
            assert _counted(chunks) == expected, (first, second)


def test_backup_counts_match_the_real_counts_with_awkward_names(local_env, awkward_names_database):
    manifest = back_up(awkward_names_database)

    assert manifest.table_rows == _real_counts(awkward_names_database)


def _seq_scans(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute("SELECT relname, seq_scan FROM pg_stat_user_tables").fetchall()
    return dict(rows)


def _wait_alone(conn: psycopg.Connection[Any], dbname: str) -> None:
    """Until every other session on the database has ended: a backend flushes its table
    statistics before it leaves pg_stat_activity, so the counters are final then."""
    deadline = time.monotonic() + 60
    while conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (dbname,),
    ).fetchone() != (0,):
        assert time.monotonic() < deadline, "sessions of the backup never ended"
        time.sleep(0.05)


def test_a_backup_reads_each_table_once(local_env, make_database):
    url = make_database("onescan")
    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE a AS SELECT g AS id FROM generate_series(1, 1000) g;"
            "CREATE TABLE b AS SELECT g AS id FROM generate_series(1, 10) g;"
            "CREATE TABLE c (id int)"
        )
        _wait_alone(conn, dbname)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        before = _seq_scans(conn)

        manifest = back_up(url)

        _wait_alone(conn, dbname)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        after = _seq_scans(conn)
    assert manifest.table_rows == {"public.a": 1000, "public.b": 10, "public.c": 0}
    assert {table: after[table] - before[table] for table in after} == {"a": 1, "b": 1, "c": 1}


def test_table_names_are_read_in_the_databases_own_encoding(local_env, make_database):
    url = make_database("latin1")
    name = DatabaseUrl(url).dbname
    with admin_connect() as admin:
        admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} ENCODING 'LATIN1' TEMPLATE template0 "
                "LC_COLLATE 'C' LC_CTYPE 'C'"
            ).format(sql.Identifier(name))
        )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute('CREATE TABLE "café" (x int); INSERT INTO "café" VALUES (1), (2)')

    manifest = back_up(url)

    assert manifest.table_rows == {"public.café": 2}
