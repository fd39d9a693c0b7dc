"""check-database-integrity finds what would hurt after a restore."""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg

from pgvault_assets.engine.postgres.integrity import (
    INDEXES,
    check_database_integrity,
    indexes_verified,
)
from pgvault_assets.settings import DatabaseUrl
from tests.test_engine.helpers import back_up


def _results(url, manifest=None):
    return {
        r.name: r
        for r in check_database_integrity(DatabaseUrl(url), manifest, install_amcheck=True)
    }


def test_a_healthy_database_passes_every_check(local_env, awkward_database):
    manifest = back_up(awkward_database)
    results = _results(awkward_database, manifest)
    assert all(r.passed for r in results.values()), results
    assert not results["row counts"].skipped
    assert not results[INDEXES].skipped


def test_rows_missing_since_the_backup_fail_the_row_count_check(local_env, awkward_database):
    manifest = back_up(awkward_database)
    with psycopg.connect(awkward_database, autocommit=True) as conn:
        conn.execute("DELETE FROM audit.events")
    result = _results(awkward_database, manifest)["row counts"]
    assert not result.passed and "audit.events" in result.detail


def test_sequence_behind_its_rows_is_found(make_database):
    url = make_database("seq")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t (id serial PRIMARY KEY); INSERT INTO t (id) SELECT generate_series(1, 10)"
        )
    result = _results(url)["sequences"]
    assert not result.passed and "t_id_seq would give 1" in result.detail


def test_orphaned_foreign_key_rows_are_found(make_database):
    url = make_database("fk")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE parent (a int, b int, PRIMARY KEY (a, b));"
            "CREATE TABLE child (id int, a int, b int, FOREIGN KEY (a, b) REFERENCES parent);"
            "INSERT INTO parent VALUES (1, 1);"
            "SET session_replication_role = replica;"
            "INSERT INTO child VALUES (1, 1, 1), (2, 2, 2), (3, NULL, 5);"
        )
    result = _results(url)["foreign keys"]
    assert not result.passed and "child has 1 rows" in result.detail


def test_production_without_amcheck_skips_the_index_check_instead_of_failing_it(make_database):
    """Production's integrity check never installs amcheck, even for a moment; without it the
    index check is a skip, not a failure."""
    url = make_database("noamcheck")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    (result,) = [
        r
        for r in check_database_integrity(DatabaseUrl(url), None, install_amcheck=False)
        if r.name == INDEXES
    ]
    assert result.passed and result.skipped
    assert result.detail == "the amcheck extension is not installed here"


def traces_of_amcheck(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT 'extension ' || extname FROM pg_extension WHERE extname = 'amcheck' "
                "UNION ALL SELECT 'schema ' || nspname FROM pg_namespace "
                "WHERE nspname = 'pgvault_amcheck' "
                "UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE proname = 'bt_index_check'"
            )
        ]


def test_the_index_check_verifies_indexes_and_leaves_no_amcheck_behind(make_database):
    url = make_database("amcheck")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)"
        )

    result = indexes_verified(DatabaseUrl(url), install_amcheck=True)

    assert result.passed and not result.skipped, result
    assert "B-tree indexes match" in result.detail
    assert traces_of_amcheck(url) == []


# An index over a function declared immutable that is not: changing what the function reads
# leaves the index disagreeing with its table, which amcheck's heapallindexed finds.
LYING_INDEX = """
CREATE TABLE knob (v int);
INSERT INTO knob VALUES (1);
CREATE FUNCTION scaled(x int) RETURNS int IMMUTABLE LANGUAGE sql
    AS 'SELECT x * (SELECT v FROM public.knob)';
CREATE TABLE t (id int);
INSERT INTO t SELECT generate_series(1, 100);
CREATE INDEX t_scaled ON t (scaled(id));
UPDATE knob SET v = 2;
"""


def test_an_index_check_that_finds_corruption_fails_and_leaves_no_amcheck_behind(make_database):
    url = make_database("amcheckbad")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(LYING_INDEX)

    result = indexes_verified(DatabaseUrl(url), install_amcheck=True)

    assert not result.passed, result
    assert "public.t_scaled" in result.detail and "\n" not in result.detail
    assert traces_of_amcheck(url) == []


def test_an_index_check_killed_midway_leaves_no_amcheck_behind(make_database):
    """The check is killed while amcheck, created by it, waits to verify a locked table."""
    url = make_database("amcheckkill")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    check = (
        "import sys; from pgvault_assets.engine.postgres.integrity import indexes_verified; "
        "from pgvault_assets.settings import DatabaseUrl; "
        "indexes_verified(DatabaseUrl(sys.argv[1]), install_amcheck=True)"
    )
    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(url) as holder:
        holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        process = subprocess.Popen([sys.executable, "-c", check, url])
        try:
            waiting = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND wait_event_type = 'Lock' AND query LIKE '%%verify_heapam%%'"
            )
            deadline = time.monotonic() + 120  # a bound against hanging, not a timing claim
            with psycopg.connect(url, autocommit=True) as watcher:
                while watcher.execute(waiting, (dbname,)).fetchone() != (1,):
                    assert process.poll() is None, "the check ended before reaching the lock"
                    assert time.monotonic() < deadline, "the check never reached the lock"
                    time.sleep(0.05)
        finally:
            process.kill()
            process.wait()
        holder.rollback()

    assert traces_of_amcheck(url) == []
