"""A restore loads the one streamed dump over several psql sessions and gets the same database
as one session does: the schema first, tables side by side, keys before the foreign keys
that need them. A failure in any session stops all of them, and the read-ahead is bounded."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgvault_assets.engine.postgres.compare import compare_databases
from pgvault_assets.engine.restore.parallel_load import ParallelLoad, _find_terminator, _Unit
from pgvault_assets.engine.restore.restore import restore_backup
from pgvault_assets.errors import RestoreFailed
from pgvault_assets.settings import DatabaseUrl
from tests.conftest import FIXTURES_DIR, load_sql_file
from tests.dbcompare import database_snapshot
from tests.test_engine.helpers import DAY, back_up, marked, marker_intact, vault

MIB = 1024 * 1024


def _restore_with(target: str, loaders: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESTORE_PARALLEL_LOADERS", str(loaders))
    restore_backup(vault(), DAY, DatabaseUrl(target))


@pytest.mark.parametrize("schema", ["awkward_schema.sql", "regression_like.sql"])
def test_a_parallel_restore_is_identical_to_a_serial_one(
    local_env, make_database, monkeypatch, schema
):
    source = make_database("src")
    load_sql_file(source, FIXTURES_DIR / schema)
    back_up(source)
    serial, parallel = make_database("serial"), make_database("parallel")

    _restore_with(serial, 1, monkeypatch)
    _restore_with(parallel, 4, monkeypatch)

    assert database_snapshot(parallel) == database_snapshot(serial) == database_snapshot(source)
    # Owners, grants, policies, comments, large objects' bytes: the whole database.
    whole = compare_databases(DatabaseUrl(serial), DatabaseUrl(parallel))
    assert whole.equal, [d for d in whole.sections if d] + list(whole.differing)
    assert compare_databases(DatabaseUrl(source), DatabaseUrl(parallel)).equal


def test_a_restored_database_is_analyzed_table_by_table_across_the_sessions(
    local_env, make_database, monkeypatch
):
    """Planner statistics for every table and materialized view, as a database-wide ANALYZE
    leaves them, though each was analyzed on whichever session was free."""
    source = make_database("src")
    load_sql_file(source, FIXTURES_DIR / "regression_like.sql")
    back_up(source)
    target = make_database("staging")

    _restore_with(target, 2, monkeypatch)

    with psycopg.connect(target) as conn:
        unanalyzed = conn.execute(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' AND c.reltuples > 0 "
            "AND NOT EXISTS (SELECT 1 FROM pg_statistic s WHERE s.starelid = c.oid)"
        ).fetchall()
        analyzed = conn.execute(
            "SELECT count(DISTINCT starelid) FROM pg_statistic s JOIN pg_class c ON c.oid = s.starelid "
            "WHERE c.relnamespace <> 'pg_catalog'::regnamespace"
        ).fetchone()
    assert unanalyzed == []
    assert analyzed is not None and analyzed[0] > 5


def _frozen_pages(url: str, table: str) -> tuple[int, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_visibility")
        row = conn.execute(
            "SELECT all_frozen, pg_relation_size(%s::regclass) / current_setting('block_size')::int "
            "FROM pg_visibility_map_summary(%s::regclass)",
            (table, table),
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_tables_are_loaded_frozen_so_no_later_vacuum_rewrites_them(
    local_env, make_database, monkeypatch
):
    source = make_database("src")
    load_sql_file(source, FIXTURES_DIR / "regression_like.sql")
    back_up(source)
    target = make_database("staging")

    _restore_with(target, 2, monkeypatch)

    frozen, pages = _frozen_pages(target, "shop.order_lines")
    assert pages > 100
    assert frozen == pages
    # A partition is an ordinary table: frozen too.
    frozen, pages = _frozen_pages(target, "public.measurements_2024")
    assert pages > 0
    assert frozen == pages


# A CHECK or a unique index that holds only in the source database: restored anywhere else,
# one session fails while b_big loads or indexes on another.
BIG_BESIDE = """
    CREATE TABLE b_big AS
        SELECT g, md5(g::text) || md5((g + 1)::text) AS h FROM generate_series(1, 400000) g;
    CREATE INDEX b_big_h ON b_big (h);
    CREATE TABLE c_small AS SELECT g FROM generate_series(1, 1000) g;
"""
FAILS = {
    "in the data": """
        CREATE FUNCTION only_at_home(id int) RETURNS boolean LANGUAGE sql
            AS $$ SELECT $1 < 100 OR current_database() = '{home}' $$;
        CREATE TABLE a_fails (id int CHECK (only_at_home(id)));
        INSERT INTO a_fails SELECT 100 FROM generate_series(1, 50000);
    """,
    "after the data": """
        CREATE FUNCTION key_at_home(id int) RETURNS int LANGUAGE sql IMMUTABLE
            AS $$ SELECT CASE WHEN current_database() = '{home}' THEN $1 ELSE 0 END $$;
        CREATE TABLE a_fails AS SELECT g AS id FROM generate_series(1, 1000) g;
        CREATE UNIQUE INDEX a_fails_key ON a_fails (key_at_home(id));
    """,
}


def _psql_children() -> list[int]:
    """psql processes this test process started and has not reaped."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat.read_text().split("(", 1)[1].rsplit(")", 1)
        except (OSError, ValueError):
            continue
        if name == "psql" and int(rest.split()[1]) == os.getpid():
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize(
    ("where", "reason"), [("in the data", "a_fails_id_check"), ("after the data", "a_fails_key")]
)
def test_a_failing_session_stops_every_session_and_leaves_the_target_untouched(
    local_env, make_database, monkeypatch, where, reason
):
    """The restore says psql's reason, every session is gone, the scratch is dropped."""
    source = make_database("src")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(BIG_BESIDE + FAILS[where].format(home=DatabaseUrl(source).dbname))
    back_up(source)
    target = marked(make_database("staging"))
    monkeypatch.setenv("RESTORE_PARALLEL_LOADERS", "3")

    with pytest.raises(RestoreFailed, match=rf"psql failed while restoring \(.*{reason}"):
        restore_backup(vault(), DAY, DatabaseUrl(target))

    assert _psql_children() == []
    assert marker_intact(target)
    with psycopg.connect(target, autocommit=True) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) AND datname <> %s",
            (DatabaseUrl(target).dbname, DatabaseUrl(target).dbname),
        ).fetchall()
    assert left == []


def _dump(url: str) -> bytes:
    pg_dump = shutil.which("pg_dump")
    assert pg_dump is not None
    return subprocess.run(
        [pg_dump, "--no-password", "--format=plain", "-d", url], capture_output=True, check=True
    ).stdout


def test_a_table_larger_than_the_read_ahead_streams_through_one_session_within_the_bound(
    make_database,
):
    source = make_database("src")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 150000) g;"
            "CREATE TABLE small_a AS SELECT g FROM generate_series(1, 100) g;"
            "CREATE TABLE small_b AS SELECT g FROM generate_series(1, 100) g;"
        )
    dump = _dump(source)
    big_rows = dump.index(b"\n\\.\n") - dump.index(b"COPY public.big")
    assert big_rows > 4 * MIB
    target = make_database("target")

    sink = ParallelLoad(shutil.which("psql") or "psql", DatabaseUrl(target), 2, MIB)
    try:
        for start in range(0, len(dump), 256 * 1024):
            sink.write(dump[start : start + 256 * 1024])
        sink.finish()
    except BaseException:
        sink.abort()
        raise

    assert 0 < sink.peak_queued <= MIB
    # What each COPY loaded, as the server counted it: a restore's row counts, no count(*).
    assert sink.copied_rows == {"public.big": 150000, "public.small_a": 100, "public.small_b": 100}
    assert sum(tables.count("public.big") for tables in sink.tables_by_session) == 1
    assert sorted(t for tables in sink.tables_by_session for t in tables) == [
        "public.big",
        "public.small_a",
        "public.small_b",
    ]
    assert database_snapshot(target) == database_snapshot(source)


def _unit(kind: bytes, text: str) -> _Unit:
    return _Unit(kind, {}, [text.encode()])


def test_post_data_statements_lock_the_tables_they_alter_so_two_never_share_one_at_once():
    foreign_key = _unit(
        b"FK CONSTRAINT",
        'ALTER TABLE ONLY "My Schema"."or""ders"\n'
        "    ADD CONSTRAINT fk FOREIGN KEY (c) REFERENCES public.customers(id);\n",
    )
    key = _unit(
        b"CONSTRAINT",
        "ALTER TABLE ONLY public.customers\n    ADD CONSTRAINT pk PRIMARY KEY (id);\n",
    )
    index = _unit(b"INDEX", "CREATE INDEX i ON public.customers USING btree (email);\n")
    domain = _unit(
        b"CHECK CONSTRAINT", "ALTER DOMAIN public.d\n    ADD CONSTRAINT c CHECK (VALUE > 0);\n"
    )

    assert foreign_key.locks() == {'"My Schema"."or""ders"', "public.customers"}
    assert key.locks() == {"public.customers"}
    assert index.locks() == frozenset()  # CREATE INDEX takes a share lock: nothing waits on it
    assert domain.locks() is None  # not understood: it runs alone
    assert (key.phase, index.phase, foreign_key.phase, domain.phase) == (0, 0, 2, 3)
    # What they work on, so the largest tables' statements start first.
    assert index.tables() == ["public.customers"]
    assert foreign_key.tables() == ['"My Schema"."or""ders"', "public.customers"]


def test_an_index_in_its_own_tablespace_is_built_there_whichever_session_builds_it(
    private_postgres,
):
    """pg_dump sets default_tablespace before an entry and not again for the next ones in the
    same place: each session must be told, or an index lands in the default tablespace."""
    name = f"pgvault_test_ts_{uuid.uuid4().hex[:8]}"
    location = private_postgres.cluster.base / name
    location.mkdir()
    owner = private_postgres.cluster.data.stat()
    os.chown(location, owner.st_uid, owner.st_gid)
    source = private_postgres.create_database(f"{name}_src")
    target = private_postgres.create_database(f"{name}_dst")
    with psycopg.connect(private_postgres.url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(
                sql.Identifier(name), sql.Literal(str(location))
            )
        )
    try:
        with psycopg.connect(source, autocommit=True) as conn:
            for table in ("a", "b", "c"):
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE {t} AS SELECT g FROM generate_series(1, 1000) g;"
                        "CREATE INDEX {t1} ON {t} (g) TABLESPACE {ts};"
                        "CREATE INDEX {t2} ON {t} ((g + 1)) TABLESPACE {ts};"
                        "CREATE INDEX {t3} ON {t} ((g + 2))"
                    ).format(
                        t=sql.Identifier(table),
                        t1=sql.Identifier(f"ts_{table}_1"),
                        t2=sql.Identifier(f"ts_{table}_2"),
                        t3=sql.Identifier(f"default_{table}"),
                        ts=sql.Identifier(name),
                    )
                )
        dump = _dump(source)
        # Said once, before the first of the six indexes in it (they sort together by name).
        assert dump.count(f"SET default_tablespace = {name};".encode()) == 1

        sink = ParallelLoad(shutil.which("psql") or "psql", DatabaseUrl(target), 3, MIB)
        try:
            sink.write(dump)
            sink.finish()
        except BaseException:
            sink.abort()
            raise

        with psycopg.connect(target) as conn:
            placed = dict(
                conn.execute(
                    "SELECT indexname, coalesce(tablespace, '') FROM pg_indexes "
                    "WHERE schemaname = 'public'"
                ).fetchall()
            )
        in_ts = {f"ts_{t}_{n}": name for t in ("a", "b", "c") for n in (1, 2)}
        assert placed == {**in_ts, "default_a": "", "default_b": "", "default_c": ""}
    finally:
        with psycopg.connect(private_postgres.url("postgres"), autocommit=True) as conn:
            for database in (source, target):
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(DatabaseUrl(database).dbname)
                    )
                )
            conn.execute(sql.SQL("DROP TABLESPACE IF EXISTS {}").format(sql.Identifier(name)))


# Rows whose bytes look like the end line in every way but one: `\.` inside a value (written
# `\\.`), a backslash before a newline escape, and an end line that is the table's first.
LOOKALIKES = r"""
    CREATE TABLE edges (id int, t text);
    INSERT INTO edges VALUES (1, E'\\.'), (2, E'a\\.\n'), (3, E'\\'), (4, E'.\n\\.'), (5, '');
    CREATE TABLE empty_one (id int);
    CREATE TABLE after (id int);
    INSERT INTO after VALUES (1), (2);
"""


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_a_dump_cut_anywhere_loads_the_same(make_database, chunk):
    """However the stream is cut, even right inside a table's end line, each table gets
    exactly its rows (the parser carries only the bytes that may begin that line)."""
    source = make_database("src")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(LOOKALIKES)
    dump = _dump(source)
    target = make_database("target")

    sink = ParallelLoad(shutil.which("psql") or "psql", DatabaseUrl(target), 2, MIB)
    try:
        for start in range(0, len(dump), chunk):
            sink.write(dump[start : start + chunk])
        sink.finish()
    except BaseException:
        sink.abort()
        raise

    assert database_snapshot(target) == database_snapshot(source)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (b"a\\tb\n" * 5000 + b"\\.\n", 25000),  # backslashes dense: the plain search takes over
        (b"x" * 9000 + b"\\\\.\\n\n\\.\n", 9006),  # the first `\.` is not followed by a newline
        (b"\\.x\n" * 3, -1),
    ],
)
def test_the_end_of_a_tables_rows_is_found_however_many_backslashes_come_before(rows, expected):
    assert _find_terminator(rows, 0) == expected == rows.find(b"\\.\n")
