"""Create the benchmark database `pgvault_bench`: realistic rows, plain pg_dump of ~1.5 GB.

pgbench tables compress ~30x and would flatter any compressor; real application data
compresses 3-4x. So the bulk here is a `documents` table of word-salad text with some random
tokens, jsonb documents, timestamps, money and uuids, tuned so that gzip -6 gives about 3.5x.
Rows are generated server-side with generate_series + random() (minutes, not hours), in chunks
so progress is visible. The database is reused when its size marker matches.

Usage: .venv/bin/python bench/make_dataset.py [--size-gb 1.5] [--many-tables] [--force]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

import psycopg
from psycopg import sql

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_DBNAME = "pgvault_bench"
MARKER_VERSION = 1
CHUNK_ROWS = 50_000
ACCOUNTS = 100_000

# Everyday English with some app vocabulary and transliterated Arabic; picked with a skew
# towards the front (random()^2), like real word frequencies.
_WORD_TEXT = """
the of and to a in is it you that he was for on are with as I his they be at one have this
from or had by hot word but what some we can out other were all there when up use your how
said an each she which do their time if will way about many then them write would like so
these her long make thing see him two has look more day could go come did number sound no
most people my over know water than call first who may down side been now find any new work
part take get place made live where after back little only round man year came show every
good me give our under name very through just form sentence great think say help low line
differ turn cause much mean before move right boy old too same tell does set three want air
well also play small end put home read hand port large spell add even land here must big
high such follow act why ask men change went light kind off need house picture try us again
animal point mother world near build self earth father head stand own page should country
found answer school grow study still learn plant cover food sun four between state keep eye
never last let thought city tree cross farm hard start might story saw far sea draw left
late run while press close night real life few north open seem together next white children
begin got walk example ease paper group always music those both mark often letter until mile
river car feet care second book carry took science eat room friend began idea fish mountain
stop once base hear horse cut sure watch color face wood main enough plain girl usual young
ready above ever red list though feel talk bird soon body dog family direct pose leave song
measure door product black short numeral class wind question happen complete ship area half
rock order fire south problem piece told knew pass since top whole king space heard best
hour better true during hundred five remember step early hold west ground interest reach
fast verb sing listen six table travel less morning ten simple several vowel toward war lay
against pattern slow center love person money serve appear road map rain rule govern pull
cold notice voice unit power town fine certain fly fall lead cry dark machine note wait plan
figure star box noun field rest correct able pound done beauty drive stood contain front
teach week final gave green oh quick develop ocean warm free minute strong special mind
behind clear tail produce fact street inch multiply nothing course stay wheel full force
blue object decide surface deep moon island foot system busy test record boat common gold
user account order invoice payment refund session token request response error retry queue
salam sabr shukr dua dhikr masjid salah wudu quran surah ayah tafsir hadith sunnah ramadan
"""
WORDS = _WORD_TEXT.split()

# Body text mixes stock phrases (real prose repeats itself), single words and random tokens
# (codes, hashes, typos); these shares set how well the dump compresses.
RANDOM_TOKEN_SHARE = 0.02
PHRASE_SHARE = 0.55


def phrases(count: int = 400) -> list[str]:
    """A fixed set of 2-6 word phrases, the same on every run."""
    rng = random.Random(1729)
    return [" ".join(rng.choices(WORDS, k=rng.randint(2, 6))) for _ in range(count)]


SCHEMA_SQL = """
CREATE TABLE public.accounts (
    id          integer PRIMARY KEY,
    email       text NOT NULL,
    name        text NOT NULL,
    country     char(2),
    created_at  timestamptz NOT NULL,
    balance     numeric(14, 2) NOT NULL
);
CREATE TABLE public.documents (
    id          bigint NOT NULL,
    public_id   uuid NOT NULL,
    account_id  integer NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz,
    status      text NOT NULL,
    amount      numeric(12, 2),
    score       double precision,
    title       text NOT NULL,
    body        text NOT NULL,
    payload     jsonb NOT NULL
);
"""

ACCOUNTS_SQL = """
INSERT INTO public.accounts (id, email, name, country, created_at, balance)
SELECT g,
       format('user%%s.%%s@example.com', g, substr(md5(random()::text), 1, 6)),
       initcap(w[1 + floor(random() ^ 2 * nw)::int]) || ' ' || initcap(w[1 + floor(random() * nw)::int]),
       (ARRAY['US', 'GB', 'DE', 'FR', 'SA', 'EG', 'ID', 'PK', 'TR', NULL])[1 + floor(random() * 10)::int],
       timestamptz '2020-01-01 00:00:00+00' + random() * interval '1460 days',
       round((random() * 100000 - 20000)::numeric, 2)
FROM generate_series(1, %(accounts)s) AS g,
     (SELECT %(words)s::text[] AS w, cardinality(%(words)s::text[]) AS nw) AS v
"""

# Correlated subqueries (they mention g) so each row draws its own words; the `+ 0 * i` ties
# each aggregate to its subquery, else PostgreSQL would aggregate over the outer query.
DOCUMENTS_SQL = """
INSERT INTO public.documents
SELECT g,
       md5(random()::text || g)::uuid,
       1 + floor(random() * %(accounts)s)::int,
       created,
       CASE WHEN random() < 0.3 THEN created + random() * interval '90 days' END,
       (ARRAY['draft', 'published', 'archived', 'pending', 'rejected'])
           [1 + floor(random() ^ 2 * 5)::int],
       CASE WHEN random() < 0.9 THEN round((random() * 10000)::numeric, 2) END,
       random(),
       (SELECT string_agg(w[1 + floor(random() ^ 2 * nw)::int + 0 * i], ' ')
          FROM generate_series(1, 3 + g %% 6) AS i),
       (SELECT string_agg(
                 CASE WHEN r < %(random_token_share)s
                      THEN substr(md5(random()::text), 1, 4 + floor(random() * 12)::int)
                      WHEN r < %(phrase_share)s
                      THEN ph[1 + floor(random() ^ 2 * nph)::int]
                      ELSE w[1 + floor(random() ^ 2 * nw)::int] END,
                 CASE WHEN random() < 0.08 THEN '. ' ELSE ' ' END)
          FROM generate_series(1, 20 + (g * 7) %% 60) AS i,
               LATERAL (SELECT random() + 0 * i AS r) AS draw),
       jsonb_build_object(
           'source', (ARRAY['ios', 'android', 'web', 'api'])[1 + floor(random() * 4)::int],
           'client_version', format('%%s.%%s.%%s', floor(random() * 5), floor(random() * 20),
                                    floor(random() * 100)),
           'tags', (SELECT jsonb_agg(w[1 + floor(random() ^ 2 * nw)::int + 0 * i])
                      FROM generate_series(1, 1 + g %% 4) AS i),
           'metrics', jsonb_build_object(
               'views', floor(random() * 100000)::int,
               'likes', floor(random() * 1000)::int,
               'ratio', round(random()::numeric, 4)),
           'geo', jsonb_build_object(
               'lat', round((random() * 180 - 90)::numeric, 5),
               'lon', round((random() * 360 - 180)::numeric, 5)),
           'trace_id', md5(random()::text)
       )
FROM generate_series(%(lo)s, %(hi)s) AS g,
     LATERAL (SELECT timestamptz '2023-01-01 00:00:00+00' + random() * interval '730 days'
              AS created, g AS _g) AS c,
     (SELECT %(words)s::text[] AS w, cardinality(%(words)s::text[]) AS nw,
             %(phrases)s::text[] AS ph, cardinality(%(phrases)s::text[]) AS nph) AS v
"""

POST_DATA_SQL = (
    "ALTER TABLE public.documents ADD PRIMARY KEY (id)",
    "ALTER TABLE public.documents ADD FOREIGN KEY (account_id) REFERENCES public.accounts (id)",
    "CREATE INDEX documents_account_id_idx ON public.documents (account_id)",
    "CREATE INDEX documents_created_at_idx ON public.documents (created_at)",
)


# The many-table layout: what a restore splits across sessions. Each table references the one
# named (a foreign key, and an index on its column); `share` is its part of the rows, `None` a
# fixed 1,000 rows. 12 tables, 12 primary keys, 11 foreign keys, 9 secondary indexes.
MANY_TABLES: tuple[tuple[str, float | None, str | None], ...] = (
    ("regions", None, None),
    ("warehouses", None, "regions"),
    ("suppliers", 0.004, "regions"),
    ("customers", 0.06, "regions"),
    ("products", 0.01, "suppliers"),
    ("orders", 0.16, "customers"),
    ("order_items", 0.36, "orders"),
    ("payments", 0.12, "orders"),
    ("shipments", 0.10, "warehouses"),
    ("reviews", 0.07, "products"),
    ("events", 0.09, "customers"),
    ("audit_log", 0.026, None),
)
MANY_EXTRA_FOREIGN_KEYS = (("order_items", "product", "products"),)
UNINDEXED = {"warehouses", "suppliers"}  # their foreign keys only: 9 secondary indexes
MANY_BYTES_PER_ROW = 110

MANY_TABLE_SQL = """
INSERT INTO public.{table}
SELECT g, {parent}, timestamptz '2024-01-01 00:00:00+00' + g * interval '37 seconds',
       round(((g::bigint * 7919) %% 100000) / 100.0, 2),
       w[1 + (g * 31) %% nw] || ' ' || w[1 + (g * 17) %% nw] || ' ' || md5(g::text)
FROM generate_series(1, %(rows)s) AS g,
     (SELECT %(words)s::text[] AS w, cardinality(%(words)s::text[]) AS nw) AS v
"""


def build_many_tables(server: str, dbname: str, size_gb: float) -> int:
    """Fill `dbname` with the many-table layout; return the estimated plain dump size."""
    total_rows = int(size_gb * 1e9 / MANY_BYTES_PER_ROW)
    rows = {
        name: 1000 if share is None else max(1000, int(total_rows * share))
        for name, share, _ in MANY_TABLES
    }
    with psycopg.connect(f"{server}/{dbname}", autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        for name, _, parent in MANY_TABLES:
            # order_items' second foreign key: a column added after its rows, filled in place.
            conn.execute(
                sql.SQL(
                    "CREATE TABLE public.{} (id bigint, parent bigint, created_at timestamptz, "
                    "amount numeric(12, 2), note text)"
                ).format(sql.Identifier(name))
            )
            parent_expr = (
                sql.SQL("NULL")
                if parent is None
                else sql.SQL("1 + (g::bigint * 7) %% {}").format(sql.Literal(rows[parent]))
            )
            started = time.monotonic()
            conn.execute(
                sql.SQL(MANY_TABLE_SQL).format(table=sql.Identifier(name), parent=parent_expr),
                {"rows": rows[name], "words": WORDS},
            )
            if name == "order_items":
                conn.execute(
                    sql.SQL(
                        "ALTER TABLE public.order_items ADD COLUMN product bigint;"
                        "UPDATE public.order_items SET product = 1 + id % {}"
                    ).format(sql.Literal(rows["products"]))
                )
            print(
                f"  {name:<12} {rows[name]:>12,} rows ({time.monotonic() - started:4.0f}s)",
                flush=True,
            )
        for name, _, _ in MANY_TABLES:
            conn.execute(
                sql.SQL("ALTER TABLE public.{} ADD PRIMARY KEY (id)").format(sql.Identifier(name))
            )
        foreign_keys = [(n, "parent", p) for n, _, p in MANY_TABLES if p] + list(
            MANY_EXTRA_FOREIGN_KEYS
        )
        for name, column, parent in foreign_keys:
            conn.execute(
                sql.SQL(
                    "ALTER TABLE public.{} ADD FOREIGN KEY ({}) REFERENCES public.{} (id)"
                ).format(sql.Identifier(name), sql.Identifier(column), sql.Identifier(parent))
            )
            if name not in UNINDEXED:
                conn.execute(
                    sql.SQL("CREATE INDEX ON public.{} ({})").format(
                        sql.Identifier(name), sql.Identifier(column)
                    )
                )
        conn.execute("VACUUM (FREEZE, ANALYZE)")
    return sum(rows.values()) * MANY_BYTES_PER_ROW


def marker_matches(marker: dict[str, Any] | None, size_gb: float, layout: str) -> bool:
    return bool(
        marker
        and marker.get("pgvault_bench") == MARKER_VERSION
        and marker.get("size_gb") == size_gb
        and marker.get("layout", "documents") == layout
        and isinstance(marker.get("estimated_dump_bytes"), int)
    )


def existing_marker(admin: psycopg.Connection[Any], dbname: str) -> dict[str, Any] | None:
    """The size marker on the database, or None when it is absent or unreadable."""
    row = admin.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
        [dbname],
    ).fetchone()
    if row is None or not row[0]:
        return None
    try:
        return json.loads(row[0])
    except ValueError:
        return None


def database_exists(admin: psycopg.Connection[Any], dbname: str) -> bool:
    query = "SELECT 1 FROM pg_database WHERE datname = %s"
    return admin.execute(query, [dbname]).fetchone() is not None


def copy_bytes(conn: psycopg.Connection[Any], query: sql.Composable) -> int:
    """Size of what pg_dump would write for `query`'s rows (COPY text format)."""
    total = 0
    with conn.cursor() as cur, cur.copy(sql.SQL("COPY ({}) TO STDOUT").format(query)) as copy:
        for chunk in copy:
            total += len(chunk)
    return total


def build(server: str, dbname: str, size_gb: float) -> int:
    """Fill `dbname`; return the estimated plain pg_dump size in bytes."""
    target_bytes = int(size_gb * 1e9)
    with psycopg.connect(f"{server}/{dbname}", autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SELECT setseed(0.4242)")
        conn.execute(SCHEMA_SQL)
        params: dict[str, Any] = {
            "words": WORDS,
            "phrases": phrases(),
            "accounts": ACCOUNTS,
            "random_token_share": RANDOM_TOKEN_SHARE,
            "phrase_share": RANDOM_TOKEN_SHARE + PHRASE_SHARE,
        }
        conn.execute(ACCOUNTS_SQL, params)
        accounts_bytes = copy_bytes(conn, sql.SQL("SELECT * FROM public.accounts"))

        # One chunk first, to learn how many dump bytes a row makes.
        started = time.monotonic()
        conn.execute(DOCUMENTS_SQL, {**params, "lo": 1, "hi": CHUNK_ROWS})
        sample = copy_bytes(conn, sql.SQL("SELECT * FROM public.documents"))
        per_row = sample / CHUNK_ROWS
        total_rows = max(CHUNK_ROWS, int((target_bytes - accounts_bytes) / per_row))
        print(f"~{per_row:.0f} dump bytes per row -> {total_rows:,} rows", flush=True)

        done = CHUNK_ROWS
        while done < total_rows:
            hi = min(done + CHUNK_ROWS, total_rows)
            conn.execute(DOCUMENTS_SQL, {**params, "lo": done + 1, "hi": hi})
            done = hi
            elapsed = time.monotonic() - started
            rate = done / elapsed
            print(
                f"  {done:>12,} / {total_rows:,} rows  ({elapsed:5.0f}s, "
                f"~{(total_rows - done) / rate:4.0f}s left)",
                flush=True,
            )
        for statement in POST_DATA_SQL:
            conn.execute(statement)
        conn.execute("VACUUM (FREEZE, ANALYZE)")  # later dumps then read settled pages
    return accounts_bytes + int(per_row * total_rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.5, help="plain pg_dump size target")
    parser.add_argument("--server", default=DEFAULT_SERVER, help="postgresql:// URL, no dbname")
    parser.add_argument("--dbname", default=None, help="default: pgvault_bench[_many]")
    parser.add_argument(
        "--many-tables",
        action="store_true",
        help="12 tables of 1 k to millions of rows with keys, indexes and foreign keys",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the marker matches")
    args = parser.parse_args(argv)
    if args.size_gb <= 0:
        parser.error("--size-gb must be positive")
    layout = "many-tables" if args.many_tables else "documents"
    if args.dbname is None:
        args.dbname = DEFAULT_DBNAME + ("_many" if args.many_tables else "")

    with psycopg.connect(f"{args.server}/postgres", autocommit=True, connect_timeout=5) as admin:
        ident = sql.Identifier(args.dbname)
        marker = existing_marker(admin, args.dbname)
        if not args.force and marker_matches(marker, args.size_gb, layout):
            print(f"{args.dbname} already holds the {args.size_gb} GB dataset; reusing it")
        else:
            if database_exists(admin, args.dbname):
                print(f"dropping {args.dbname} (size marker differs or --force)")
                admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(ident))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(ident))
            started = time.monotonic()
            try:
                build_it = build_many_tables if args.many_tables else build
                estimate = build_it(args.server, args.dbname, args.size_gb)
            except BaseException:
                # Half a dataset must not pass for a whole one next time: no marker, no reuse.
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
                raise
            marker = {
                "pgvault_bench": MARKER_VERSION,
                "size_gb": args.size_gb,
                "layout": layout,
                "estimated_dump_bytes": estimate,
            }
            admin.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    ident, sql.Literal(json.dumps(marker))
                )
            )
            print(f"built in {time.monotonic() - started:.0f}s")

    with psycopg.connect(f"{args.server}/{args.dbname}") as conn:
        db_size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        rows = conn.execute(
            "SELECT sum(n_live_tup) FROM pg_stat_user_tables WHERE schemaname = 'public'"
        ).fetchone()[0]
    print(f"{args.dbname} ({layout}): {rows:,} rows, pg_database_size {db_size / 1e9:.2f} GB")
    assert marker is not None
    estimate = marker["estimated_dump_bytes"] / 1e9
    print(f"plain pg_dump size estimate: {estimate:.2f} GB (COPY text of a sample, extrapolated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
