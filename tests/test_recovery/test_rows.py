"""Rows deleted after a backup come back, parents first, only when asked, all or nothing."""

from __future__ import annotations

import pytest

from pgvault_assets.engine import rows
from pgvault_assets.settings import DatabaseUrl
from tests.dbcompare import database_snapshot
from tests.test_engine.helpers import DAY, vault
from tests.test_recovery.conftest import Databases, databases_named, execute, scalar
from tests.test_recovery.helpers import approve, prove_on_staging, request_restore, run

CHAIN = ("public.users", "public.bookmarks", "public.notes")


@pytest.fixture
def deleted(databases: Databases) -> tuple[Databases, int, dict]:
    """After the backup, a user with bookmarks and notes is deleted; the delete cascades."""
    user = scalar(
        databases.production,
        """
        SELECT b.user_id FROM public.bookmarks b JOIN public.notes n ON n.bookmark_id = b.id
        GROUP BY b.user_id HAVING count(DISTINCT b.id) >= 2 ORDER BY b.user_id LIMIT 1
        """,
    )
    before = {t: database_snapshot(databases.production)["rows"][t] for t in CHAIN}
    execute(databases.production, "DELETE FROM public.users WHERE id = %s", (user,))
    return databases, int(user), before


def notes_of(user: int) -> str:
    return f"bookmark_id IN (SELECT id FROM public.bookmarks WHERE user_id = {user})"


def test_dry_run_lists_the_missing_rows_parents_first_and_changes_nothing(deleted):
    databases, user, _ = deleted
    target = DatabaseUrl(databases.production)
    bookmarks = scalar(
        databases.production, "SELECT count(*) FROM public.bookmarks WHERE user_id = %s", (user,)
    )

    recovery = rows.recover_rows(
        vault(), DAY, target, "public.notes", where=notes_of(user), with_dependents=True
    )

    assert [name for name, _ in recovery.tables] == list(CHAIN)
    assert dict(recovery.tables)["public.users"] == 1
    assert dict(recovery.tables)["public.bookmarks"] >= 2
    assert recovery.statements[0].startswith('INSERT INTO "public"."users"')
    assert all(s.endswith("ON CONFLICT DO NOTHING;") for s in recovery.statements)
    assert recovery.inserted is None
    assert bookmarks == 0
    assert (
        scalar(databases.production, "SELECT count(*) FROM public.users WHERE id = %s", (user,))
        == 0
    )
    assert databases_named("pgvault_rows_") == []


def test_apply_with_dependents_brings_back_the_chain_exactly(deleted):
    databases, user, before = deleted
    target = DatabaseUrl(databases.production)
    rows.recover_rows(
        vault(), DAY, target, "public.notes", where=notes_of(user), with_dependents=True, apply=True
    )
    rows.recover_rows(
        vault(), DAY, target, "public.bookmarks", where=f"user_id = {user}", apply=True
    )

    after = database_snapshot(databases.production)["rows"]

    assert {t: after[t] for t in CHAIN} == before
    assert databases_named("pgvault_rows_") == []


def test_apply_without_the_parents_inserts_nothing(deleted):
    databases, user, _ = deleted
    notes = scalar(databases.production, "SELECT count(*) FROM public.notes")

    with pytest.raises(rows.RowRecoveryFailed, match="--with-dependents"):
        rows.recover_rows(
            vault(),
            DAY,
            DatabaseUrl(databases.production),
            "public.notes",
            where=notes_of(user),
            apply=True,
        )

    assert scalar(databases.production, "SELECT count(*) FROM public.notes") == notes


def test_a_second_recovery_finds_nothing_left_to_insert(deleted):
    databases, user, _ = deleted
    target = DatabaseUrl(databases.production)
    rows.recover_rows(vault(), DAY, target, "public.users", where=f"id = {user}", apply=True)

    again = rows.recover_rows(vault(), DAY, target, "public.users", apply=True)

    assert again.total == 0


def test_the_where_predicate_cannot_write(deleted):
    databases, _, _ = deleted

    for predicate in ("true; DELETE FROM public.users", "nextval('public.invoice_number_seq') > 0"):
        with pytest.raises(rows.ConfigError, match="--where failed in the scratch database"):
            rows.recover_rows(
                vault(), DAY, DatabaseUrl(databases.production), "public.users", where=predicate
            )


def test_cli_dry_run_prints_sql_and_a_count_and_apply_inserts(deleted, capsys):
    databases, user, _ = deleted
    argv = ("recover-rows", "--date", str(DAY), "--table", "public.users", "--target", "staging")
    code, _, err = run(capsys, "restore-from-backup", "--date", str(DAY), "--target", "staging")
    assert code == 0, err
    execute(databases.staging, "DELETE FROM public.users WHERE id = %s", (user,))

    code, out, err = run(capsys, *argv, "--where", f"id = {user}")

    assert code == 0, err
    assert out.count("INSERT INTO") == 1
    assert "-- 1 rows missing from" in out
    assert (
        scalar(databases.staging, "SELECT count(*) FROM public.users WHERE id = %s", (user,)) == 0
    )

    code, out, err = run(capsys, *argv, "--where", f"id = {user}", "--apply")

    assert code == 0, err
    assert "inserted 1 of 1 rows" in out
    assert (
        scalar(databases.staging, "SELECT count(*) FROM public.users WHERE id = %s", (user,)) == 1
    )


def test_cli_apply_to_production_needs_an_approved_request(deleted, capsys):
    databases, user, _ = deleted

    code, _, err = run(
        capsys,
        *("recover-rows", "--date", str(DAY), "--table", "public.users"),
        *("--target", "production", "--apply"),
    )

    assert code == 2
    assert "needs an approved request" in err
    assert (
        scalar(databases.production, "SELECT count(*) FROM public.users WHERE id = %s", (user,))
        == 0
    )


def test_rows_go_into_production_exactly_as_two_approvers_approved(deleted, approvers, capsys):
    databases, user, _ = deleted
    prove_on_staging(capsys)
    scope = ("--table", "public.users", "--where", f"id = {user}")
    request_id = request_restore(capsys, "--kind", "recover-rows", *scope)
    approve(capsys, request_id, approvers.alice)
    approve(capsys, request_id, approvers.bob)
    argv = ("recover-rows", "--date", str(DAY), "--target", "production", "--apply")

    widened = run(capsys, *argv, "--table", "public.users", "--request", request_id)
    assert widened[0] == 2
    assert "run exactly what was approved" in widened[2]

    code, out, err = run(capsys, *argv, *scope, "--request", request_id, "--skip-confirmation")

    assert code == 0, err
    assert "inserted 1 of 1 rows" in out
    assert (
        scalar(databases.production, "SELECT count(*) FROM public.users WHERE id = %s", (user,))
        == 1
    )
    replay = run(capsys, *argv, *scope, "--request", request_id, "--skip-confirmation")
    assert replay[0] == 1
    assert "already executed" in replay[2]


def test_a_where_predicate_may_use_like_patterns(deleted):
    databases, user, _ = deleted

    recovery = rows.recover_rows(
        vault(), DAY, DatabaseUrl(databases.production), "public.users", where="email LIKE 'user%'"
    )

    assert recovery.total == 1
    assert f"'user{user}@" in recovery.statements[0]
