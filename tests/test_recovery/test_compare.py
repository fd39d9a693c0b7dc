"""Compare tells equal databases from differing ones, table by table; the CLI exits 1 on a difference."""

from __future__ import annotations

import pytest

from pgvault_assets.engine.postgres.compare import compare_databases
from pgvault_assets.engine.restore.restore import restore_backup
from pgvault_assets.settings import DatabaseUrl
from tests.test_engine.helpers import DAY, vault
from tests.test_recovery.conftest import Databases, execute, scalar
from tests.test_recovery.helpers import run


@pytest.fixture
def restored(databases: Databases) -> Databases:
    """Staging holds a restore of production's backup: the same data, written anew."""
    restore_backup(vault(), DAY, DatabaseUrl(databases.staging))
    return databases


def test_a_restored_copy_compares_equal(restored, capsys):
    comparison = compare_databases(DatabaseUrl(restored.staging), DatabaseUrl(restored.production))

    assert comparison.equal
    assert {t.table for t in comparison.tables} == set(restored.manifest.table_rows)
    assert run(capsys, "compare", "--source", "staging", "--target", "production")[0] == 0


def test_one_changed_value_is_named_and_the_cli_exits_1(restored, capsys):
    execute(
        restored.production,
        "UPDATE public.verse_texts SET translation = 'changed' WHERE surah = 1 AND ayah = 7",
    )

    comparison = compare_databases(DatabaseUrl(restored.staging), DatabaseUrl(restored.production))
    code, out, _ = run(capsys, "compare", "--source", "staging", "--target", "production")

    assert [t.table for t in comparison.differing] == ["public.verse_texts"]
    assert comparison.differing[0].source.rows == comparison.differing[0].target.rows
    assert code == 1
    assert "1 tables differ: public.verse_texts" in out


def test_a_table_missing_on_one_side_differs(restored):
    execute(restored.production, "DROP TABLE public.pending_deletions")

    comparison = compare_databases(DatabaseUrl(restored.staging), DatabaseUrl(restored.production))

    assert [(t.table, t.target) for t in comparison.differing] == [
        ("public.pending_deletions", None)
    ]


def test_only_the_named_tables_are_compared(restored, capsys):
    execute(restored.production, "DELETE FROM public.notes")

    code, out, _ = run(
        capsys, "compare", "--source", "staging", "--target", "production", "--tables", "users"
    )

    assert code == 0
    assert "all 1 tables are equal" in out


def test_the_readme_production_flow_passes_on_a_faithful_restore(databases, capsys):
    """Restore to staging, check its integrity, compare with production: the README's steps,
    each exiting 0; the check verified the indexes and left staging as it found it."""
    day = str(DAY)

    restored = run(capsys, "restore-from-backup", "--date", day, "--target", "staging", "--verify")
    checked = run(capsys, "check-database-integrity", "--database", "staging", "--date", day)
    compared = run(capsys, "compare", "--source", "staging", "--target", "production")

    assert restored[0] == 0, restored[2]
    assert checked[0] == 0, checked[2]
    assert "B-tree indexes match each other" in " ".join(checked[1].split())
    assert compared[0] == 0, compared[1] + compared[2]
    assert (
        scalar(databases.staging, "SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'")
        == 0
    )


def test_a_changed_value_is_found_in_a_table_with_a_column_named_t(make_database):
    """The checksum covers the whole row even where a column's name is the row's alias
    (PostgreSQL's regression database has such tables)."""
    left, right = make_database("left"), make_database("right")
    for url, value in ((left, "kept"), (right, "changed")):
        execute(
            url,
            f"CREATE TABLE public.tee (t int, other text); INSERT INTO public.tee VALUES (1, '{value}')",
        )

    comparison = compare_databases(DatabaseUrl(left), DatabaseUrl(right), ["public.tee"])

    assert [t.table for t in comparison.differing] == ["public.tee"]
