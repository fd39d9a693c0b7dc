"""Accidental deletion: put back the rows a backup has and the target lost, nothing else.

The backup is restored into a scratch database (always dropped); rows of one table present
there and missing from the target by primary key become `INSERT ... ON CONFLICT DO NOTHING`
statements, so running them twice, or after someone re-created a row, changes nothing.

In PostgreSQL a row's dependents are the rows that reference it: what `ON DELETE CASCADE`
deleted with it. With dependents, the rows referencing the recovered ones (an order's items,
a customer's orders and their items) that the target also lacks come back too, recursively,
and so do the parent rows any of them needs. With parents only, just the rows they need.
Parents go first, in foreign-key order; within a table that references itself
(`employees.manager_id`), a row comes after the rows it references. A parent brought back
only because a row needs it does not bring back its own dependents: the operator's `--where`
names what was deleted, and a parent's other children are not part of that. The operator's
`--where` predicate runs only in the scratch database, inside a read-only transaction, as one
statement.

The rows come from a day's backup, or, with point-in-time recovery set up, from any second:
then the scratch database is the source's own database in a throwaway cluster that pgBackRest
recovered to that time (as `restore-to-time` recovers one), read there and removed with it, so
rows deleted at 14:03 come back as they were at 14:02, not as last night's backup had them.
"""

from __future__ import annotations

import contextlib
import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypedDict

import psycopg
from psycopg import sql

from pgvault_assets.engine.approvals import audit
from pgvault_assets.engine.approvals import authorization as auth
from pgvault_assets.engine.basics.clock import Clock, utcnow
from pgvault_assets.engine.basics.interrupts import said_as
from pgvault_assets.engine.basics.testpoints import pause_point
from pgvault_assets.engine.pitr.recover import recover_to_time, source_user
from pgvault_assets.engine.pitr.runner import PgBackRest
from pgvault_assets.engine.postgres.compare import pin_output_formats, qualified
from pgvault_assets.engine.postgres.postgres import connect
from pgvault_assets.engine.recovery.operations import time_key
from pgvault_assets.engine.restore.restore import restore_into_scratch
from pgvault_assets.engine.restore.scratch import Scratch
from pgvault_assets.engine.vault.vault import Vault
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
class PointInTime:
    """Rows as they were at `time`: `source`'s database (the cluster pgBackRest archives)
    recovered to it in a throwaway cluster, which is removed afterwards whatever happens."""

    tool: PgBackRest
    source: DatabaseUrl
    time: datetime
    base_backup: str | None = None
    """Pinned by an approved request: a recovery from any other base backup is refused."""
    cluster_root: Path | None = None
    """Where the throwaway cluster lives (default: the temporary directory)."""


Origin = date | PointInTime
"""Where the rows come from: the backup of a day, or a recovery to a point in time."""


def described(origin: Origin) -> str:
    """The origin as messages and the audit trail name it."""
    if isinstance(origin, PointInTime):
        return f"the recovery to {time_key(origin.time)}"
    return f"the {origin.isoformat()} backup"


@dataclass(frozen=True)
class RowRecovery:
    day: date | None
    """The backup the rows came from; None when they came from a recovery to `time`."""
    table: str
    tables: tuple[tuple[str, int], ...]
    statements: tuple[str, ...]
    inserted: int | None = None
    preamble: tuple[str, ...] = ()
    """`SET CONSTRAINTS` when rows reference each other in a cycle a deferred check allows."""
    abandoned_scratch: tuple[str, ...] = ()
    """Scratch databases of dead runs, dropped before this one restored its own."""
    matched: int = 0
    """Rows of the table in the backup that `--where` matched, present in the target or not."""
    time: datetime | None = None
    base_backup: str | None = None
    stopped_at: str | None = None
    """Of a recovery to `time`: the base backup it started from and where replay stopped."""

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


def _checked_where(where: str | None) -> None:
    if where is not None and not where.strip():
        raise ConfigError(
            "--where is empty, which would match every row; give a predicate, or leave --where "
            "out to recover every row the target lacks"
        )


def _checked_related(with_dependents: bool, parents_only: bool) -> None:
    if with_dependents and parents_only:
        raise ConfigError(
            "--with-dependents already brings back the parents the rows need; "
            "pass it or --parents-only, not both"
        )


def resolve_table(url: DatabaseUrl, name: str) -> str:
    """`SCHEMA.TABLE` as given, or an unqualified name found through the database's
    `search_path`, as the applications connecting to it would find it."""
    if "." in name:
        _split(name)
        return name
    _check_text("--table", name)
    with connect(url) as conn:
        found = conn.execute(
            """
            SELECT n.nspname FROM unnest(current_schemas(false)) WITH ORDINALITY s(name, place)
            JOIN pg_namespace n ON n.nspname = s.name
            JOIN pg_class c ON c.relnamespace = n.oid
            WHERE c.relname = %s AND c.relkind IN ('r', 'p')
            ORDER BY s.place LIMIT 1
            """,
            (name,),
        ).fetchone()
        path = conn.execute("SHOW search_path").fetchone()
    if found is None:
        shown = path[0] if path else ""
        raise ConfigError(
            f"there is no table {name!r} on {url.dbname}'s search_path ({shown}); "
            "name it as SCHEMA.TABLE"
        )
    resolved = f"{found[0]}.{name}"
    _split(resolved)  # a system table is refused however it is named
    return resolved


def table_shape(conn: psycopg.Connection, name: str) -> TableShape:
    """Columns, primary key and foreign keys of `SCHEMA.TABLE`."""
    schema, table = _split(name)
    return _shape(conn, schema, table)


def _shape(conn: psycopg.Connection, schema: str, table: str) -> TableShape:
    """Types qualified so they mean the same anywhere; a partition's copies of its parent's
    foreign keys left out, the parent's own being the one that counts."""
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
            WHERE c.conrelid = %s AND c.contype = 'f' AND c.conparentid = 0
            ORDER BY c.conname
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


def _referencing(conn: psycopg.Connection, shape: TableShape) -> list[tuple[str, str, str]]:
    """(schema, table, constraint) of each foreign key referencing `shape`'s table."""
    return conn.execute(
        """
        SELECT n.nspname, t.relname, c.conname FROM pg_constraint c
        JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE c.contype = 'f' AND c.conparentid = 0
          AND c.confrelid = (SELECT p.oid FROM pg_class p JOIN pg_namespace pn
                             ON pn.oid = p.relnamespace WHERE pn.nspname = %s AND p.relname = %s)
        ORDER BY 1, 2, 3
        """,
        (shape.schema, shape.name),
    ).fetchall()


def _key(row: Row, columns: tuple[str, ...]) -> tuple:
    return tuple(row.values[c] for c in columns)


def _identity(shape: TableShape, row: Row) -> tuple:
    """What tells the row apart: its primary key, or all of it in a table without one."""
    if shape.primary_key:
        return _key(row, shape.primary_key)
    return tuple(row.texts[c.name] for c in shape.columns)


def _key_arrays(shape: TableShape, columns: tuple[str, ...]) -> sql.Composed:
    return sql.SQL(", ").join(
        sql.SQL("%s::{}[]").format(sql.SQL(shape.type_of(c))) for c in columns
    )


def _present_keys(
    conn: psycopg.Connection, shape: TableShape, columns: tuple[str, ...], keys: set[tuple]
) -> set[tuple]:
    """Which of `keys` the target's `columns` hold, looked up in batches."""
    ordered = sorted(keys, key=repr)
    present: set[tuple] = set()
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    for start in range(0, len(ordered), BATCH):
        batch = ordered[start : start + BATCH]
        query = sql.SQL("SELECT {} FROM {} WHERE ({}) IN (SELECT * FROM unnest({}))").format(
            names, shape.ident, names, _key_arrays(shape, columns)
        )
        try:
            found = conn.execute(query, [[key[i] for key in batch] for i in range(len(columns))])
        except psycopg.errors.UndefinedTable:
            raise ConfigError(
                f"the target has no table {shape.qualified_name}; "
                "row recovery needs the table to exist"
            ) from None
        present.update(tuple(row) for row in found)
    return present


def _missing(target: psycopg.Connection, shape: TableShape, rows: list[Row]) -> list[Row]:
    """The rows whose primary key the target lacks."""
    present = _present_keys(
        target, shape, shape.primary_key, {_key(r, shape.primary_key) for r in rows}
    )
    return [r for r in rows if _key(r, shape.primary_key) not in present]


def _rows_with_keys(
    conn: psycopg.Connection, shape: TableShape, columns: tuple[str, ...], keys: set[tuple]
) -> list[Row]:
    """The scratch rows whose `columns` take one of `keys`, fetched in batches."""
    ordered = sorted(keys, key=repr)
    found: list[Row] = []
    for start in range(0, len(ordered), BATCH):
        batch = ordered[start : start + BATCH]
        query = sql.SQL("{} WHERE ({}) IN (SELECT * FROM unnest({}))").format(
            _select(shape),
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            _key_arrays(shape, columns),
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


class _Found:
    """Rows to insert per table, in discovery order, each once; and which of them were walked
    down to the rows referencing them."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple, Row]] = {}
        self.walked_down: set[tuple[str, tuple]] = set()

    def add(self, shape: TableShape, rows: list[Row], *, down: bool) -> list[Row]:
        """Record `rows`; return those still to walk: new ones, and when walking down, rows
        reached before only as parents. Each row is walked down once, so cycles end."""
        table = self.rows.setdefault(shape.qualified_name, {})
        to_walk = []
        for row in rows:
            identity = _identity(shape, row)
            new = identity not in table
            table.setdefault(identity, row)
            if down and (shape.qualified_name, identity) not in self.walked_down:
                self.walked_down.add((shape.qualified_name, identity))
                to_walk.append(row)
            elif new:
                to_walk.append(row)
        return to_walk

    def keys(self, table: str, columns: tuple[str, ...]) -> set[tuple]:
        return {_key(r, columns) for r in self.rows.get(table, {}).values()}


def _related_rows(
    scratch: psycopg.Connection,
    target: psycopg.Connection,
    shapes: dict[str, TableShape],
    root: TableShape,
    rows: list[Row],
    *,
    dependents: bool,
) -> dict[str, list[Row]]:
    """`rows` and the rows related to them that the backup has and the target lacks: the
    parents any of them needs, and with `dependents` the rows referencing them, recursively."""

    def shape_of(schema: str, table: str) -> TableShape:
        name = f"{schema}.{table}"
        if name not in shapes:
            shapes[name] = _shape(scratch, schema, table)
        return shapes[name]

    found = _Found()
    queue = deque([(root, found.add(root, rows, down=dependents), dependents)])
    while queue:
        shape, batch, down = queue.popleft()
        for fk in shape.foreign_keys:
            needed = {key for key in (_key(r, fk.columns) for r in batch) if None not in key}
            needed -= found.keys(fk.parent, fk.parent_columns)
            if not needed:
                continue
            parent = shape_of(*fk.parent.split(".", 1))
            needed -= _present_keys(target, parent, fk.parent_columns, needed)
            new = found.add(
                parent, _rows_with_keys(scratch, parent, fk.parent_columns, needed), down=False
            )
            if new:
                queue.append((parent, new, False))
        if not down:
            continue
        for schema, table, constraint in _referencing(scratch, shape):
            child = shape_of(schema, table)
            fk = next(k for k in child.foreign_keys if k.name == constraint)
            keys = {key for key in (_key(r, fk.parent_columns) for r in batch) if None not in key}
            if not keys:
                continue
            if not child.primary_key:
                raise ConfigError(
                    f"{child.qualified_name} references the recovered rows but has no primary "
                    "key, so its missing rows cannot be told apart; rerun with --parents-only"
                )
            candidates = _rows_with_keys(scratch, child, fk.columns, keys)
            new = found.add(child, _missing(target, child, candidates), down=True)
            if new:
                queue.append((child, new, True))
    return {table: list(rows.values()) for table, rows in found.rows.items()}


def plan_row_recovery(
    scratch_url: DatabaseUrl,
    target_url: DatabaseUrl,
    origin: Origin,
    table: str,
    *,
    where: str | None = None,
    with_dependents: bool = False,
    parents_only: bool = False,
) -> RowRecovery:
    """The INSERTs that put back the rows of `table` the target lost, and with `with_dependents`
    or `parents_only` the related rows it lost with them."""
    _checked_where(where)
    _checked_related(with_dependents, parents_only)
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
        if not candidates:
            option = "--time" if isinstance(origin, PointInTime) else "--date"
            raise ConfigError(
                f"no row of {root.qualified_name} in {described(origin)} matches --where "
                f"{where!r}; nothing to recover: check the predicate and {option}"
                if where
                else f"{described(origin)} has no rows in {root.qualified_name}; nothing to recover"
            )
        missing = _missing(target, root, candidates)
        if with_dependents or parents_only:
            found = _related_rows(
                scratch, target, shapes, root, missing, dependents=with_dependents
            )
        else:
            found = {root.qualified_name: missing}
        parents = {
            name: {fk.parent for fk in shapes[name].foreign_keys if fk.parent in found}
            for name in found
        }
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
        None if isinstance(origin, PointInTime) else origin,
        root.qualified_name,
        tuple((name, len(found[name])) for name in order if found[name]),
        statements,
        preamble=("SET CONSTRAINTS ALL DEFERRED;",) if deferred else (),
        matched=len(candidates),
        time=origin.time if isinstance(origin, PointInTime) else None,
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
                "rerun with --parents-only or --with-dependents"
            ) from None
        except psycopg.Error as exc:
            raise RowRecoveryFailed(
                f"inserting the recovered rows failed ({str(exc).strip().splitlines()[0]}); nothing was inserted"
            ) from None
    return replace(recovery, inserted=inserted)


class _Learned(TypedDict, total=False):
    """What recovering to a time learned, for the record: the base backup and where it stopped."""

    base_backup: str
    stopped_at: str


@contextlib.contextmanager
def _scratch(
    vault: Vault, origin: Origin, server_url: DatabaseUrl, now: Clock
) -> Iterator[tuple[Scratch, _Learned]]:
    """The database to read the rows from, and what its making learned for the record: a
    day's backup restored into a scratch database on `server_url`'s server, or the source's
    database in a cluster recovered to a time. Either is gone when the block ends."""
    if isinstance(origin, date):
        with restore_into_scratch(vault, origin, server_url, label="rows", now=now) as scratch:
            yield scratch, {}
        return
    with recover_to_time(
        origin.tool,
        origin.time,
        superuser=source_user(origin.source),
        root=origin.cluster_root,
        base_backup=origin.base_backup,
    ) as recovered:
        pause_point("scratch")
        yield (
            Scratch(recovered.database(origin.source.dbname)),
            {"base_backup": recovered.backup_label, "stopped_at": recovered.stopped_at},
        )


def recover_rows(
    vault: Vault,
    origin: Origin,
    target_url: DatabaseUrl,
    table: str,
    *,
    where: str | None = None,
    with_dependents: bool = False,
    parents_only: bool = False,
    apply: bool = False,
    scratch_server: DatabaseUrl | None = None,
    now: Clock = utcnow,
    before_apply: Callable[[RowRecovery], None] | None = None,
) -> RowRecovery:
    """Read `origin` as a scratch database, plan the recovery, and (with `apply`) run it.

    An unqualified `table` is found through the target's `search_path`. A backup's scratch
    database lives on `scratch_server` (default: the target's server) and is dropped whatever
    happens; scratch databases that killed runs left there are dropped first. A time's lives
    in its throwaway cluster, removed whatever happens, before anything is inserted.
    `before_apply` sees the plan first and may refuse by raising.
    """
    _checked_where(where)
    _checked_related(with_dependents, parents_only)
    table = resolve_table(target_url, table)
    if isinstance(origin, PointInTime):
        what = f"row recovery as of {time_key(origin.time)}"
        undone = "the throwaway cluster was removed"
    else:
        what = f"row recovery from {origin.isoformat()}"
        undone = "its scratch database was dropped"
    with said_as(f"{what} interrupted: {undone}; {target_url.dbname} is as it was"):
        with _scratch(vault, origin, scratch_server or target_url, now) as (scratch, learned):
            recovery = plan_row_recovery(
                scratch.url,
                target_url,
                origin,
                table,
                where=where,
                with_dependents=with_dependents,
                parents_only=parents_only,
            )
        recovery = replace(recovery, abandoned_scratch=scratch.abandoned, **learned)
        if not apply or not recovery.statements:
            return recovery
        if before_apply is not None:
            before_apply(recovery)
        return apply_row_recovery(target_url, recovery)


def recover_rows_staging(
    vault: Vault,
    origin: Origin,
    target_url: DatabaseUrl,
    table: str,
    *,
    actor: str,
    where: str | None = None,
    with_dependents: bool = False,
    parents_only: bool = False,
    scratch_server: DatabaseUrl | None = None,
    now: Clock = utcnow,
) -> RowRecovery:
    """Apply a row recovery outside production, recorded in the audit trail however it ends:
    the backup's date and SHA-256, or the time and the base backup recovered from."""
    if isinstance(origin, PointInTime):
        pinned = {"time": time_key(origin.time)}
    else:
        pinned = {"date": origin.isoformat()}
    body = {
        **pinned,
        "database": target_url.dbname,
        "table": table,
        "where": where or "",
        "with_dependents": with_dependents,
        "parents_only": parents_only,
    }
    with audit.staging_operation(vault, audit.ROW_RECOVERY, body, actor=actor, now=now) as learned:
        if isinstance(origin, date):
            learned["sha256"] = vault.read_manifest(origin).sha256
        result = recover_rows(
            vault,
            origin,
            target_url,
            table,
            where=where,
            with_dependents=with_dependents,
            parents_only=parents_only,
            apply=True,
            scratch_server=scratch_server,
            now=now,
        )
        learned["table"] = result.table
        learned["inserted"] = result.inserted or 0
        if result.base_backup is not None:
            learned.update(base_backup=result.base_backup, stopped_at=result.stopped_at)
    return result


def request_scope(
    target_url: DatabaseUrl,
    table: str,
    where: str | None,
    *,
    with_dependents: bool,
    parents_only: bool,
) -> dict[str, str]:
    """What a `recover-rows` request pins besides the backup: exactly which rows may go in,
    the table named as the target's `search_path` finds it, so approvers see which one."""
    _checked_where(where)
    _checked_related(with_dependents, parents_only)
    return {
        "table": resolve_table(target_url, table),
        "where": where or "",
        "with_dependents": "true" if with_dependents else "false",
        "parents_only": "true" if parents_only else "false",
    }


def recover_rows_production(
    vault: Vault,
    request_id: str,
    target_url: DatabaseUrl,
    approvers_file: Path,
    *,
    scratch_server: DatabaseUrl | None = None,
    point_in_time: PointInTime | None = None,
    now: Clock = utcnow,
    confirm: Callable[[str], None] | None = None,
) -> RowRecovery:
    """Apply a dual-authorized `recover-rows` request to production, exactly as it was approved.

    A request for rows as of a time is run with `point_in_time` (how to recover the cluster),
    at the time it names and from the base backup it pins; one for a backup, without."""
    origin: Origin
    if point_in_time is not None:
        pinned_time = auth.authorize_pinned_time(
            vault,
            request_id,
            approvers_file,
            kind="recover-rows",
            database=target_url.dbname,
            now=now,
        )
        if pinned_time.time != time_key(point_in_time.time):
            raise auth.AuthorizationRefused(
                f"request {request_id} approved rows as of {pinned_time.time}, not "
                f"{time_key(point_in_time.time)}; nothing was inserted"
            )
        authorization = pinned_time.authorization
        origin = replace(point_in_time, base_backup=pinned_time.base_backup)
    else:
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
        origin = pinned.day
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
            origin,
            target_url,
            scope["table"],
            where=scope["where"] or None,
            with_dependents=scope["with_dependents"] == "true",
            parents_only=scope.get("parents_only") == "true",
            apply=True,
            scratch_server=scratch_server,
            now=now,
            before_apply=claim,
        )
    except BaseException as exc:
        if claimed:
            auth.record_outcome(vault, request, succeeded=False, detail=str(exc), now=now)
        raise
    as_of = (
        f" as of {time_key(result.time)} (base backup {result.base_backup})" if result.time else ""
    )
    auth.record_outcome(
        vault, request, succeeded=True, detail=f"inserted {result.inserted} rows{as_of}", now=now
    )
    return result
