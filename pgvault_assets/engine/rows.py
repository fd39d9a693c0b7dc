"""Accidental deletion: put back the rows a backup has and the target lost, nothing else.

The backup is restored into a scratch database (always dropped); rows of one table present
there and missing from the target by primary key become `INSERT ... ON CONFLICT DO NOTHING`
statements, so running them twice, or after someone re-created a row, changes nothing. With
dependents, the parent rows those rows reference and the target also lost come first, in
foreign-key order; within a table that references itself (`employees.manager_id`), a row
comes after the rows it references. The operator's `--where` predicate runs only in the
scratch database, inside a read-only transaction, as one statement.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgvault_assets.engine import audit
from pgvault_assets.engine import authorization as auth
from pgvault_assets.engine.clock import Clock, utcnow
from pgvault_assets.engine.compare import pin_output_formats, qualified
from pgvault_assets.engine.interrupts import said_as
from pgvault_assets.engine.postgres import connect
from pgvault_assets.engine.restore import restore_into_scratch
from pgvault_assets.engine.vault import Vault
from pgvault_assets.errors import ConfigError, PgvaultError
from pgvault_assets.settings import DatabaseUrl

BATCH = 1000


class RowRecoveryFailed(PgvaultError):
    """Recovered rows could not be inserted; the transaction was rolled back, nothing changed."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    generated: bool
    identity_always: bool


@dataclass(frozen=True)
class ForeignKey:
    name: str
    columns: tuple[str, ...]
    parent: str
    parent_columns: tuple[str, ...]


@dataclass(frozen=True)
class TableShape:
    schema: str
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    foreign_keys: tuple[ForeignKey, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Composable:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.name))

    def type_of(self, column: str) -> str:
        return next(c.type for c in self.columns if c.name == column)


@dataclass(frozen=True)
class Row:
    """One row: Python values to match keys by, text values to write back exactly."""

    values: dict[str, Any]
    texts: dict[str, str | None]


@dataclass(frozen=True)
class RowRecovery:
    day: date
    table: str
    tables: tuple[tuple[str, int], ...]
    statements: tuple[str, ...]
    inserted: int | None = None
    preamble: tuple[str, ...] = ()
    """`SET CONSTRAINTS` when rows reference each other in a cycle a deferred check allows."""
    abandoned_scratch: tuple[str, ...] = ()
    """Scratch databases of dead runs, dropped before this one restored its own."""

    @property
    def total(self) -> int:
        return len(self.statements)

    def script(self) -> str:
        """The statements to run; deferred constraints last only for a transaction, so in one."""
        if not self.preamble:
            return "\n".join(self.statements)
        return "\n".join(("BEGIN;", *self.preamble, *self.statements, "COMMIT;"))


SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")


def _check_text(option: str, text: str) -> None:
    """PostgreSQL takes no NUL and psycopg sends UTF-8: refuse what cannot be sent, in one line."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ConfigError(f"{option} is not valid text (it holds an unpaired surrogate)") from None
    if "\0" in text:
        raise ConfigError(f"{option} holds a NUL character, which PostgreSQL cannot take")


def _split(name: str) -> tuple[str, str]:
    _check_text("--table", name)
    if not name.isprintable():
        raise ConfigError(f"{name!r} is not a table name: it holds a control character")
    schema, _, table = qualified(name).partition(".")
    if not schema or not table:
        raise ConfigError(f"{name!r} is not a table name; use SCHEMA.TABLE")
    if schema in SYSTEM_SCHEMAS or schema.startswith("pg_toast"):
        raise ConfigError(f"{name!r} is a system table; row recovery puts back the data's own rows")
    return schema, table


def table_shape(conn: psycopg.Connection, name: str) -> TableShape:
    """Columns, primary key and foreign keys; types qualified so they mean the same anywhere."""
    schema, table = _split(name)
    conn.execute("SELECT set_config('search_path', 'pg_catalog', true)")
    found = conn.execute(
        """
        SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
        """,
        (schema, table),
    ).fetchone()
    if found is None:
        raise ConfigError(f"there is no table {schema}.{table} in the backup; check --table")
    oid = found[0]
    columns = tuple(
        Column(name, type_, generated != "", identity == "a")
        for name, type_, generated, identity in conn.execute(
            """
            SELECT attname, format_type(atttypid, atttypmod), attgenerated::text, attidentity::text
            FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped
            ORDER BY attnum
            """,
            (oid,),
        )
    )
    key = conn.execute(
        """
        SELECT array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i)
        FROM pg_constraint c WHERE c.conrelid = %s AND c.contype = 'p'
        """,
        (oid,),
    ).fetchone()
    foreign_keys = tuple(
        ForeignKey(name, tuple(cols), f"{ref_schema}.{ref_table}", tuple(ref_cols))
        for name, cols, ref_schema, ref_table, ref_cols in conn.execute(
            """
            SELECT c.conname,
                   array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
                   pn.nspname, pl.relname,
                   array(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
                         JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)
            FROM pg_constraint c
            JOIN pg_class pl ON pl.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = pl.relnamespace
            WHERE c.conrelid = %s AND c.contype = 'f' ORDER BY c.conname
            """,
            (oid,),
        )
    )
    return TableShape(schema, table, columns, tuple(key[0]) if key else (), foreign_keys)


def _select(shape: TableShape) -> sql.Composed:
    raw = [sql.Identifier(c.name) for c in shape.columns]
    text = [sql.SQL("{}::text").format(sql.Identifier(c.name)) for c in shape.columns]
    return sql.SQL("SELECT {} FROM {} AS t").format(sql.SQL(", ").join(raw + text), shape.ident)


def _rows(shape: TableShape, cursor: Iterable[tuple[Any, ...]]) -> list[Row]:
    names = [c.name for c in shape.columns]
    width = len(names)
    return [
        Row(dict(zip(names, row[:width], strict=True)), dict(zip(names, row[width:], strict=True)))
        for row in cursor
    ]


def _keys_in(conn: psycopg.Connection, shape: TableShape, columns: tuple[str, ...]) -> set[tuple]:
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), shape.ident
    )
    try:
        return {tuple(row) for row in conn.execute(query)}
    except psycopg.errors.UndefinedTable:
        raise ConfigError(
            f"the target has no table {shape.qualified_name}; row recovery needs the table to exist"
        ) from None


def _rows_with_keys(
    conn: psycopg.Connection, shape: TableShape, columns: tuple[str, ...], keys: set[tuple]
) -> list[Row]:
    """The scratch rows whose `columns` take one of `keys`, fetched in batches."""
    ordered = sorted(keys, key=repr)
    found: list[Row] = []
    for start in range(0, len(ordered), BATCH):
        batch = ordered[start : start + BATCH]
        arrays = sql.SQL(", ").join(
            sql.SQL("%s::{}[]").format(sql.SQL(shape.type_of(c))) for c in columns
        )
        query = sql.SQL("{} WHERE ({}) IN (SELECT * FROM unnest({}))").format(
            _select(shape), sql.SQL(", ").join(map(sql.Identifier, columns)), arrays
        )
        params = [[key[i] for key in batch] for i in range(len(columns))]
        found.extend(_rows(shape, conn.execute(query, params)))
    return found


def _insert(conn: psycopg.Connection, shape: TableShape, row: Row) -> str:
    columns = [c for c in shape.columns if not c.generated]
    overriding = (
        sql.SQL(" OVERRIDING SYSTEM VALUE")
        if any(c.identity_always for c in columns)
        else sql.SQL("")
    )
    values = [
        sql.SQL("NULL")
        if row.texts[c.name] is None
        else sql.SQL("{}::{}").format(sql.Literal(row.texts[c.name]), sql.SQL(c.type))
        for c in columns
    ]
    return (
        sql.SQL("INSERT INTO {} ({}){} VALUES ({}) ON CONFLICT DO NOTHING;")
        .format(
            shape.ident,
            sql.SQL(", ").join(sql.Identifier(c.name) for c in columns),
            overriding,
            sql.SQL(", ").join(values),
        )
        .as_string(conn)
    )


def _foreign_key_order(found: dict[str, list[Row]], parents: dict[str, set[str]]) -> list[str]:
    """Parents before children; tables in a foreign-key cycle keep their discovery order."""
    order: list[str] = []
    remaining = list(found)
    while remaining:
        ready = [t for t in remaining if not (parents.get(t, set()) - {t}) & set(remaining)]
        for table in ready or remaining[-1:]:
            order.append(table)
            remaining.remove(table)
    return order


def _referenced_first(rows: list[Row], keys: list[ForeignKey]) -> list[Row] | None:
    """`rows` with each after the rows it references through `keys`; None if they form a cycle.

    Kahn's algorithm, taking the earliest ready row each time, so unrelated rows keep their
    order. A row referencing itself needs nothing before it: its own insert satisfies the check.
    """
    before: list[set[int]] = [set() for _ in rows]
    for fk in keys:
        position = {
            key: i
            for i, key in enumerate(tuple(r.values[c] for c in fk.parent_columns) for r in rows)
            if None not in key
        }
        for i, row in enumerate(rows):
            parent = position.get(tuple(row.values[c] for c in fk.columns))
            if parent is not None and parent != i:
                before[i].add(parent)
    after: list[list[int]] = [[] for _ in rows]
    for i, parents in enumerate(before):
        for parent in parents:
            after[parent].append(i)
    waiting = [len(parents) for parents in before]
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for child in after[i]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, child)
    return [rows[i] for i in order] if len(order) == len(rows) else None


def _checked_per_statement(target: psycopg.Connection, shape: TableShape) -> set[str]:
    """The table's foreign keys the target cannot defer: the ones the insert order must satisfy."""
    return {
        name
        for (name,) in target.execute(
            """
            SELECT c.conname FROM pg_constraint c
            JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
            WHERE n.nspname = %s AND t.relname = %s AND c.contype = 'f' AND NOT c.condeferrable
            """,
            (shape.schema, shape.name),
        )
    }


def _self_references_first(
    target: psycopg.Connection, shape: TableShape, rows: list[Row]
) -> tuple[list[Row], bool]:
    """Order a table's rows by its references to itself; True if a cycle needs deferred checks.

    A cycle through constraints the target can defer is allowed (checked at commit instead);
    one through a constraint checked per statement cannot be inserted in any order.
    """
    own = [fk for fk in shape.foreign_keys if fk.parent == shape.qualified_name]
    if not own:
        return rows, False
    ordered = _referenced_first(rows, own)
    if ordered is not None:
        return ordered, False
    immediate = _checked_per_statement(target, shape)
    strict = [fk for fk in own if fk.name in immediate]
    ordered = _referenced_first(rows, strict)
    if ordered is None:
        names = ", ".join(fk.name for fk in strict)
        raise RowRecoveryFailed(
            f"rows of {shape.qualified_name} reference each other in a cycle through {names}, "
            "checked per statement, so no insert order works; nothing was inserted: make it "
            f"deferrable (ALTER TABLE {shape.qualified_name} ALTER CONSTRAINT {strict[0].name} "
            "DEFERRABLE) and rerun"
        )
    return ordered, True


def plan_row_recovery(
    scratch_url: DatabaseUrl,
    target_url: DatabaseUrl,
    day: date,
    table: str,
    *,
    where: str | None = None,
    with_dependents: bool = False,
) -> RowRecovery:
    """The INSERTs that put back the rows of `table` the target lost (and, optionally, parents)."""
    with connect(scratch_url, autocommit=False) as scratch, connect(target_url) as target:
        root = table_shape(scratch, table)
        shapes = {root.qualified_name: root}
        if not root.primary_key:
            raise ConfigError(
                f"{root.qualified_name} has no primary key, so missing rows cannot be told apart"
            )
        scratch.commit()
        scratch.read_only = True
        pin_output_formats(scratch)
        query = _select(root)
        params: list[Any] = []
        if where:
            _check_text("--where", where)
            # One statement only (a parameter forces the extended protocol), and read-only.
            predicate = sql.SQL(where.replace("%", "%%"))  # a LIKE pattern is not a placeholder
            query = sql.SQL("{} WHERE ({}) AND %s").format(query, predicate)
            params = [True]
        try:
            candidates = _rows(root, scratch.execute(query, params or None))
        except psycopg.Error as exc:
            raise ConfigError(
                f"--where failed in the scratch database ({str(exc).strip().splitlines()[0]})"
            ) from None
        present = _keys_in(target, root, root.primary_key)
        found: dict[str, list[Row]] = {
            root.qualified_name: [
                r for r in candidates if tuple(r.values[c] for c in root.primary_key) not in present
            ]
        }
        parents: dict[str, set[str]] = {}
        queue = [(root, found[root.qualified_name])]
        while with_dependents and queue:
            shape, rows = queue.pop(0)
            for fk in shape.foreign_keys:
                needed = {
                    key
                    for key in (tuple(r.values[c] for c in fk.columns) for r in rows)
                    if None not in key
                }
                if not needed:
                    continue
                if fk.parent not in shapes:
                    shapes[fk.parent] = table_shape(scratch, fk.parent)
                parent = shapes[fk.parent]
                parents.setdefault(shape.qualified_name, set()).add(fk.parent)
                planned = {
                    tuple(r.values[c] for c in fk.parent_columns) for r in found.get(fk.parent, [])
                }
                missing = needed - _keys_in(target, parent, fk.parent_columns) - planned
                new_rows = _rows_with_keys(scratch, parent, fk.parent_columns, missing)
                if new_rows:
                    found.setdefault(fk.parent, []).extend(new_rows)
                    queue.append((parent, new_rows))
        order = _foreign_key_order(found, parents)
        deferred = False
        for name in order:
            found[name], cycle = _self_references_first(target, shapes[name], found[name])
            deferred = deferred or cycle
        statements = tuple(
            _insert(scratch, shapes[name], row) for name in order for row in found[name]
        )
        scratch.rollback()
    return RowRecovery(
        day,
        root.qualified_name,
        tuple((name, len(found[name])) for name in order),
        statements,
        preamble=("SET CONSTRAINTS ALL DEFERRED;",) if deferred else (),
    )


def apply_row_recovery(target_url: DatabaseUrl, recovery: RowRecovery) -> RowRecovery:
    """Run every statement in one transaction: all the rows go in, or none do."""
    inserted = 0
    with connect(target_url, autocommit=False) as conn:
        try:
            with conn.transaction():
                for statement in recovery.preamble:
                    conn.execute(statement)
                for statement in recovery.statements:
                    inserted += max(conn.execute(statement).rowcount, 0)
        except psycopg.errors.ForeignKeyViolation:
            raise RowRecoveryFailed(
                "the rows reference rows the target no longer has; nothing was inserted, "
                "rerun with --with-dependents"
            ) from None
        except psycopg.Error as exc:
            raise RowRecoveryFailed(
                f"inserting the recovered rows failed ({str(exc).strip().splitlines()[0]}); nothing was inserted"
            ) from None
    return replace(recovery, inserted=inserted)


def recover_rows(
    vault: Vault,
    day: date,
    target_url: DatabaseUrl,
    table: str,
    *,
    where: str | None = None,
    with_dependents: bool = False,
    apply: bool = False,
    scratch_server: DatabaseUrl | None = None,
    now: Clock = utcnow,
    before_apply: Callable[[RowRecovery], None] | None = None,
) -> RowRecovery:
    """Restore `day` into a scratch database, plan the recovery, and (with `apply`) run it.

    The scratch database lives on `scratch_server` (default: the target's server) and is
    dropped whatever happens; scratch databases that killed runs left there are dropped first.
    `before_apply` sees the plan first and may refuse by raising.
    """
    with said_as(
        f"row recovery from {day.isoformat()} interrupted: its scratch database was dropped; "
        f"{target_url.dbname} is as it was"
    ):
        return _recover_rows(
            vault,
            day,
            target_url,
            table,
            where=where,
            with_dependents=with_dependents,
            apply=apply,
            scratch_server=scratch_server,
            now=now,
            before_apply=before_apply,
        )


def _recover_rows(
    vault: Vault,
    day: date,
    target_url: DatabaseUrl,
    table: str,
    *,
    where: str | None,
    with_dependents: bool,
    apply: bool,
    scratch_server: DatabaseUrl | None,
    now: Clock,
    before_apply: Callable[[RowRecovery], None] | None,
) -> RowRecovery:
    with restore_into_scratch(vault, day, scratch_server or target_url, label="rows", now=now) as (
        scratch
    ):
        recovery = plan_row_recovery(
            scratch.url, target_url, day, table, where=where, with_dependents=with_dependents
        )
    recovery = replace(recovery, abandoned_scratch=scratch.abandoned)
    if not apply or not recovery.statements:
        return recovery
    if before_apply is not None:
        before_apply(recovery)
    return apply_row_recovery(target_url, recovery)


def recover_rows_staging(
    vault: Vault,
    day: date,
    target_url: DatabaseUrl,
    table: str,
    *,
    actor: str,
    where: str | None = None,
    with_dependents: bool = False,
    scratch_server: DatabaseUrl | None = None,
    now: Clock = utcnow,
) -> RowRecovery:
    """Apply a row recovery outside production, recorded in the audit trail however it ends."""
    body = {
        "date": day.isoformat(),
        "database": target_url.dbname,
        "table": table,
        "where": where or "",
        "with_dependents": with_dependents,
    }
    with audit.staging_operation(vault, audit.ROW_RECOVERY, body, actor=actor, now=now) as learned:
        learned["sha256"] = vault.read_manifest(day).sha256
        result = recover_rows(
            vault,
            day,
            target_url,
            table,
            where=where,
            with_dependents=with_dependents,
            apply=True,
            scratch_server=scratch_server,
            now=now,
        )
        learned["inserted"] = result.inserted or 0
    return result


def request_scope(table: str, where: str | None, with_dependents: bool) -> dict[str, str]:
    """What a `recover-rows` request pins besides the backup: exactly which rows may go in."""
    return {
        "table": qualified(table),
        "where": where or "",
        "with_dependents": "true" if with_dependents else "false",
    }


def recover_rows_production(
    vault: Vault,
    request_id: str,
    target_url: DatabaseUrl,
    approvers_file: Path,
    *,
    scratch_server: DatabaseUrl | None = None,
    now: Clock = utcnow,
    confirm: Callable[[str], None] | None = None,
) -> RowRecovery:
    """Apply a dual-authorized `recover-rows` request to production, exactly as it was approved."""
    pinned = auth.authorize_pinned_backup(
        vault,
        request_id,
        approvers_file,
        kind="recover-rows",
        database=target_url.dbname,
        undone="nothing was inserted",
        now=now,
    )
    authorization = pinned.authorization
    request = authorization.request
    scope = request.scope
    claimed: list[bool] = []

    def claim(recovery: RowRecovery) -> None:
        if confirm is not None:
            confirm(target_url.dbname)
        auth.consume(vault, authorization, now=now)
        claimed.append(True)

    try:
        result = recover_rows(
            vault,
            pinned.day,
            target_url,
            scope["table"],
            where=scope["where"] or None,
            with_dependents=scope["with_dependents"] == "true",
            apply=True,
            scratch_server=scratch_server,
            now=now,
            before_apply=claim,
        )
    except BaseException as exc:
        if claimed:
            auth.record_outcome(vault, request, succeeded=False, detail=str(exc), now=now)
        raise
    auth.record_outcome(
        vault, request, succeeded=True, detail=f"inserted {result.inserted} rows", now=now
    )
    return result
