"""Rows deleted after a backup come back with what was deleted with them, parents first,
only when asked, all or nothing."""

from __future__ import annotations

import psycopg
import pytest

from pgvault_assets.engine.recovery import rows
from pgvault_assets.engine.restore.restore import restore_into_scratch
from pgvault_assets.settings import DatabaseUrl
from tests.dbcompare import database_snapshot
from tests.test_engine.helpers import DAY, back_up, vault
from tests.test_recovery.conftest import Databases, databases_named, execute, scalar
from tests.test_recovery.helpers import approved_request, run

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


def test_dry_run_lists_the_missing_rows_parents_first_and_changes_nothing(deleted, scratch_made):
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
    (scratch,) = scratch_made
    assert scratch.startswith("pgvault_scratch_rows_") and databases_named(scratch) == []


def test_apply_with_dependents_brings_back_the_chain_exactly(deleted, scratch_made):
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
    assert len(scratch_made) == 2
    assert [databases_named(scratch) for scratch in scratch_made] == [[], []]


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
    assert "-- 1 row missing from" in out
    assert (
        scalar(databases.staging, "SELECT count(*) FROM public.users WHERE id = %s", (user,)) == 0
    )

    code, out, err = run(capsys, *argv, "--where", f"id = {user}", "--apply")

    assert code == 0, err
    assert "inserted 1 of 1 row into" in out
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
    scope = ("--table", "public.users", "--where", f"id = {user}")
    request_id = approved_request(
        capsys, approvers.alice, approvers.bob, scope=("--kind", "recover-rows", *scope)
    )
    argv = ("recover-rows", "--date", str(DAY), "--target", "production", "--apply")

    widened = run(capsys, *argv, "--table", "public.users", "--request", request_id)
    assert widened[0] == 2
    assert "run exactly what was approved" in widened[2]

    code, out, err = run(capsys, *argv, *scope, "--request", request_id, "--skip-confirmation")

    assert code == 0, err
    assert "inserted 1 of 1 row into" in out
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


ORG = """
CREATE TABLE public.employees (
    id int PRIMARY KEY,
    manager_id int REFERENCES public.employees (id) ON DELETE CASCADE,
    name text NOT NULL
);
INSERT INTO public.employees VALUES
    (1, NULL, 'ceo'), (2, 1, 'vp'), (3, 2, 'manager'), (4, 3, 'engineer'), (5, 3, 'analyst'),
    (6, 1, 'cfo');
-- The updated managers move behind their reports in the table, so the backup lists them after.
UPDATE public.employees SET name = upper(name) WHERE id IN (2, 3);
CREATE TABLE public.pairs (id int PRIMARY KEY, partner_id int REFERENCES public.pairs (id));
CREATE TABLE public.buddies (
    id int PRIMARY KEY,
    buddy_id int REFERENCES public.buddies (id) DEFERRABLE INITIALLY IMMEDIATE
);
INSERT INTO public.pairs VALUES (10, NULL), (11, 10), (12, NULL);
UPDATE public.pairs SET partner_id = 11 WHERE id = 10;
INSERT INTO public.buddies VALUES (10, NULL), (11, 10);
UPDATE public.buddies SET buddy_id = 11 WHERE id = 10;
"""


@pytest.fixture
def org(local_env, make_database) -> DatabaseUrl:
    """Backed up, then a VP is deleted with everyone under them, and two cycles of rows."""
    url = make_database("org")
    execute(url, ORG)
    back_up(url)
    execute(url, "DELETE FROM public.employees WHERE id = 2")
    execute(url, "DELETE FROM public.pairs WHERE id IN (10, 11)")
    execute(url, "DELETE FROM public.buddies WHERE id IN (10, 11)")
    return DatabaseUrl(url)


def inserted_ids(recovery: rows.RowRecovery) -> list[int]:
    return [int(s.split("VALUES ('")[1].split("'")[0]) for s in recovery.statements]


def test_rows_referencing_their_own_table_go_in_after_the_rows_they_reference(org):
    with psycopg.connect(org.secret) as conn:
        listed = [row[0] for row in conn.execute("SELECT id FROM public.employees")]
    assert listed == [1, 6], "the delete did not cascade"

    recovery = rows.recover_rows(vault(), DAY, org, "public.employees", apply=True)

    assert inserted_ids(recovery) == [2, 3, 4, 5]
    assert recovery.inserted == 4
    with psycopg.connect(org.secret) as conn:
        assert conn.execute(
            "SELECT id, manager_id, name FROM public.employees ORDER BY id"
        ).fetchall() == [
            (1, None, "ceo"),
            (2, 1, "VP"),
            (3, 2, "MANAGER"),
            (4, 3, "engineer"),
            (5, 3, "analyst"),
            (6, 1, "cfo"),
        ]


def test_the_backup_lists_reports_before_their_managers(org):
    """What makes the test above bite: inserted in the backup's order, 4 would precede 3."""
    with (
        restore_into_scratch(vault(), DAY, org, label="rows") as scratch,
        psycopg.connect(scratch.url.secret) as conn,
    ):
        listed = [row[0] for row in conn.execute("SELECT id FROM public.employees")]

    assert listed.index(4) < listed.index(3)


def test_the_managers_a_report_needs_go_in_before_it_and_not_their_other_reports(org):
    recovery = rows.recover_rows(
        vault(), DAY, org, "public.employees", where="id = 4", with_dependents=True, apply=True
    )

    assert recovery.tables == (("public.employees", 3),)
    assert inserted_ids(recovery) == [2, 3, 4]
    assert scalar(org.secret, "SELECT count(*) FROM public.employees") == 5


def test_rows_referencing_each_other_through_a_deferrable_key_go_in_together(org):
    recovery = rows.recover_rows(vault(), DAY, org, "public.buddies", apply=True)

    assert recovery.preamble == ("SET CONSTRAINTS ALL DEFERRED;",)
    assert recovery.script().startswith("BEGIN;\nSET CONSTRAINTS ALL DEFERRED;\nINSERT")
    assert recovery.inserted == 2
    assert scalar(org.secret, "SELECT buddy_id FROM public.buddies WHERE id = 10") == 11


def test_rows_referencing_each_other_through_an_immediate_key_are_refused_in_one_line(org):
    with pytest.raises(rows.RowRecoveryFailed, match="cycle through pairs_partner_id_fkey") as exc:
        rows.recover_rows(vault(), DAY, org, "public.pairs", apply=True)

    assert "\n" not in str(exc.value)
    assert scalar(org.secret, "SELECT count(*) FROM public.pairs") == 1
    advice = str(exc.value).split("(")[-1].split(")")[0]
    execute(org.secret, advice)  # doing what the message says makes the recovery possible
    assert rows.recover_rows(vault(), DAY, org, "public.pairs", apply=True).inserted == 2


def test_a_manager_comes_back_with_everyone_under_them(org):
    """Dependents of a row in a table referencing itself are walked to the bottom, once each."""
    recovery = rows.recover_rows(
        vault(), DAY, org, "public.employees", where="id = 2", with_dependents=True, apply=True
    )

    assert recovery.tables == (("public.employees", 4),)
    assert inserted_ids(recovery) == [2, 3, 4, 5]
    assert scalar(org.secret, "SELECT count(*) FROM public.employees") == 6


SHOP = """
CREATE SCHEMA shop;
CREATE SCHEMA billing;
CREATE TABLE shop.customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE shop.orders (
    id int PRIMARY KEY,
    customer_id int NOT NULL REFERENCES shop.customers ON DELETE CASCADE
);
CREATE TABLE shop.order_items (
    order_id int REFERENCES shop.orders ON DELETE CASCADE,
    line int,
    sku text NOT NULL,
    PRIMARY KEY (order_id, line)
);
CREATE TABLE billing.refunds (
    id int PRIMARY KEY,
    order_id int,
    line int,
    FOREIGN KEY (order_id, line) REFERENCES shop.order_items ON DELETE CASCADE
);
INSERT INTO shop.customers VALUES (7, 'ada'), (8, 'bob');
INSERT INTO shop.orders SELECT 700 + n, 7 FROM generate_series(1, 5) n;
INSERT INTO shop.orders VALUES (4242, 8), (801, 8);
INSERT INTO shop.order_items SELECT o.id, l, 'sku-' || o.id || '-' || l
    FROM shop.orders o, generate_series(1, 3) l;
INSERT INTO billing.refunds VALUES (1, 4242, 2), (2, 701, 1);
"""
SHOP_TABLES = ("shop.customers", "shop.orders", "shop.order_items", "billing.refunds")


def shop_rows(url: str) -> dict[str, list[tuple]]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in SHOP_TABLES}


@pytest.fixture
def shop(local_env, make_database, monkeypatch) -> tuple[DatabaseUrl, dict[str, list[tuple]]]:
    """A shop backed up as yesterday, then a staging target (production is gone from this
    environment's settings: staging is never production); returns it and its rows then."""
    url = make_database("shop")
    execute(url, SHOP)
    back_up(url)
    monkeypatch.setenv("STAGING_DATABASE_URL", url)
    return DatabaseUrl(url), shop_rows(url)


@pytest.mark.parametrize(
    ("table", "where", "tables"),
    [
        pytest.param(
            "shop.orders",
            "id = 4242",
            (("shop.orders", 1), ("shop.order_items", 3), ("billing.refunds", 1)),
            id="an order with its items and what references them",
        ),
        pytest.param(
            "shop.customers",
            "id = 7",
            (
                ("shop.customers", 1),
                ("shop.orders", 5),
                ("shop.order_items", 15),
                ("billing.refunds", 1),
            ),
            id="a customer with its orders and their items",
        ),
    ],
)
def test_deleted_rows_come_back_with_what_the_delete_cascaded_to(shop, table, where, tables):
    target, before = shop
    execute(target.secret, f"DELETE FROM {table} WHERE {where}")
    cascaded = shop_rows(target.secret)
    assert {t: len(before[t]) - len(cascaded[t]) for t, _ in tables} == dict(tables)

    recovery = rows.recover_rows(
        vault(), DAY, target, table, where=where, with_dependents=True, apply=True
    )

    assert recovery.tables == tables
    assert recovery.inserted == sum(count for _, count in tables)
    assert shop_rows(target.secret) == before


def test_an_order_whose_customer_went_too_comes_back_after_it_without_its_sibling(shop):
    """The customer comes back because the order needs it; its other order stays deleted."""
    target, before = shop
    execute(target.secret, "DELETE FROM shop.customers WHERE id = 8")

    recovery = rows.recover_rows(
        vault(), DAY, target, "shop.orders", where="id = 4242", with_dependents=True, apply=True
    )

    assert recovery.tables == (
        ("shop.customers", 1),
        ("shop.orders", 1),
        ("shop.order_items", 3),
        ("billing.refunds", 1),
    )
    assert recovery.statements[0].startswith('INSERT INTO "shop"."customers"')
    after = shop_rows(target.secret)
    assert after["shop.customers"] == before["shop.customers"]
    assert [o for o in after["shop.orders"] if o[1] == 8] == [(4242, 8)]


def test_parents_only_brings_back_the_rows_needed_and_not_those_referencing_them(shop):
    target, _ = shop
    execute(target.secret, "DELETE FROM shop.customers WHERE id = 8")

    recovery = rows.recover_rows(
        vault(), DAY, target, "shop.orders", where="id = 4242", parents_only=True, apply=True
    )

    assert recovery.tables == (("shop.customers", 1), ("shop.orders", 1))
    assert scalar(target.secret, "SELECT count(*) FROM shop.order_items WHERE order_id = 4242") == 0
    with pytest.raises(rows.ConfigError, match="pass it or --parents-only, not both"):
        rows.recover_rows(
            vault(), DAY, target, "shop.orders", with_dependents=True, parents_only=True
        )


def test_cli_dry_run_counts_each_table_and_changes_nothing(shop, capsys):
    target, _ = shop
    execute(target.secret, "DELETE FROM shop.customers WHERE id = 7")

    code, out, err = run(
        capsys,
        *("recover-rows", "--date", str(DAY), "--table", "shop.customers", "--where", "id = 7"),
        *("--target", "staging", "--with-dependents"),
    )

    assert code == 0, err
    assert out.count("INSERT INTO") == 22
    summary = " ".join(out.split())
    assert (
        "-- 22 rows missing from" in summary
        and "(shop.customers: 1, shop.orders: 5, shop.order_items: 15, billing.refunds: 1)"
        in summary
    )
    assert scalar(target.secret, "SELECT count(*) FROM shop.customers") == 1


def test_an_empty_where_is_refused_in_one_line(shop, scratch_made, capsys):
    argv = ("recover-rows", "--date", str(DAY), "--table", "shop.orders", "--target", "staging")

    code, out, err = run(capsys, *argv, "--where", "")

    assert code == 2
    assert err.strip().count("\n") == 0
    assert "--where is empty" in err
    assert "INSERT" not in out
    assert scratch_made == []  # refused before any scratch database was restored


def test_no_matching_row_and_all_rows_present_are_told_apart(shop, capsys):
    argv = ("recover-rows", "--date", str(DAY), "--table", "shop.orders", "--target", "staging")

    none = run(capsys, *argv, "--where", "id = 999999")
    present = run(capsys, *argv, "--where", "customer_id = 7")
    one = run(capsys, *argv, "--where", "id = 4242")

    assert none[0] == 2
    assert "no row of shop.orders in the" in none[2] and "matches --where 'id = 999999'" in none[2]
    assert present[0] == 0, present[2]
    assert "-- all 5 matching rows are present in" in present[1]
    assert "nothing to recover" in present[1]
    assert one[0] == 0, one[2]
    assert "-- the 1 matching row is present in" in one[1]


def test_an_unqualified_table_is_found_through_the_database_search_path(shop, capsys):
    target, before = shop
    execute(
        target.secret,
        f"ALTER DATABASE {target.dbname} SET search_path = shop, public;"
        "CREATE TABLE public.orders (id int PRIMARY KEY)",  # not first on the path
    )
    execute(target.secret, "DELETE FROM shop.orders WHERE id = 4242")
    argv = ("recover-rows", "--date", str(DAY), "--table", "orders", "--target", "staging")

    code, out, err = run(capsys, *argv, "--where", "id = 4242", "--with-dependents", "--apply")

    assert code == 0, err
    assert "inserted 5 of 5 rows" in out and "shop.orders: 1" in out
    assert shop_rows(target.secret) == before
    missing = run(capsys, *argv[:4], "nowhere", "--target", "staging")
    assert missing[0] == 2
    assert (
        "there is no table 'nowhere' on" in missing[2]
        and "search_path (shop, public)" in missing[2]
    )


def test_a_request_pins_the_table_the_search_path_finds_and_the_parents_only_flag(shop):
    target, _ = shop
    execute(target.secret, f"ALTER DATABASE {target.dbname} SET search_path = shop, public")

    scope = rows.request_scope(
        target, "orders", "id = 4242", with_dependents=False, parents_only=True
    )

    assert scope == {
        "table": "shop.orders",
        "where": "id = 4242",
        "with_dependents": "false",
        "parents_only": "true",
    }
    with pytest.raises(rows.ConfigError, match="--where is empty"):
        rows.request_scope(target, "orders", "", with_dependents=True, parents_only=False)
