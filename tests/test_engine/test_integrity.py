"""check-database-integrity finds what would hurt after a restore."""

from __future__ import annotations

import psycopg

from pgvault_assets.engine.integrity import check_database_integrity
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
    assert not results["indexes (pg_amcheck)"].skipped


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
    """Production's integrity check never installs amcheck; pg_amcheck then has nothing to
    check, which is a skip, not a failure."""
    url = make_database("noamcheck")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    (result,) = [
        r
        for r in check_database_integrity(DatabaseUrl(url), None, install_amcheck=False)
        if r.name == "indexes (pg_amcheck)"
    ]
    assert result.passed and result.skipped
    assert result.detail == "the amcheck extension is not installed here"
