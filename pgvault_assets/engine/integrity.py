"""Checks of a restored (or live) database: is it whole and consistent?

Run after a restore to staging, before anyone trusts it: row counts against the backup's
manifest, the database's owners, grants, policies, extensions, large objects, comments,
settings and roles against the backup's record of them, sequences that would hand out ids already taken, foreign keys pointing at nothing,
and PostgreSQL's own index verification (pg_amcheck) where it is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pgvault_assets.engine import shape
from pgvault_assets.engine.interrupts import CHILD_GROUP
from pgvault_assets.engine.manifest import Manifest
from pgvault_assets.engine.postgres import (
    connect,
    find_tool,
    server_version,
    table_row_counts,
    tool_env,
)
from pgvault_assets.engine.server_context import ServerContext
from pgvault_assets.settings import DatabaseUrl


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str
    skipped: bool = False


def row_counts_match(conn: psycopg.Connection, manifest: Manifest) -> CheckResult:
    actual = table_row_counts(conn, own_rows=manifest.rows_exclude_children)
    expected = manifest.table_rows
    differing = [
        f"{table} ({expected.get(table, 'absent')} in backup, {actual.get(table, 'absent')} here)"
        for table in sorted(set(expected) | set(actual))
        if expected.get(table) != actual.get(table)
    ]
    if differing:
        return CheckResult(
            "row counts",
            False,
            f"{len(differing)} tables differ from the {manifest.date} backup: "
            + "; ".join(differing[:5]),
        )
    return CheckResult(
        "row counts",
        True,
        f"{len(expected)} tables, {sum(expected.values())} rows, as in the {manifest.date} backup",
    )


def shape_matches(
    conn: psycopg.Connection, manifest: Manifest, context: ServerContext | None
) -> list[CheckResult]:
    """One check per section of the database's shape, against what the backup recorded."""
    if context is None:
        return [
            CheckResult(
                "owners, grants, settings, roles",
                True,
                f"the {manifest.date} backup predates pgvault recording them",
                skipped=True,
            )
        ]
    recorded = shape.recorded_shape(context)
    here = shape.read_shape(conn)
    found = {d.section: d for d in shape.differences(recorded, here)}
    results = []
    for section in shape.SECTIONS:
        if section not in recorded:
            results.append(
                CheckResult(
                    section,
                    True,
                    f"the {manifest.date} backup predates pgvault recording them",
                    skipped=True,
                )
            )
        elif section not in found:
            results.append(
                CheckResult(
                    section,
                    True,
                    f"{len(recorded[section])} as in the {manifest.date} backup",
                )
            )
        elif not shape.matters(found[section]):
            results.append(
                CheckResult(
                    section,
                    True,
                    "as in the backup but for: "
                    + found[section].describe(f"{manifest.date} backup", "here"),
                )
            )
        else:
            results.append(
                CheckResult(
                    section, False, found[section].describe(f"{manifest.date} backup", "here")
                )
            )
    return results


def sequences_ahead_of_rows(conn: psycopg.Connection) -> CheckResult:
    """A sequence behind its column's maximum would make the next insert fail on a duplicate key."""
    owned = conn.execute(
        """
        SELECT sn.nspname, s.relname, tn.nspname, t.relname, a.attname
        FROM pg_depend d
        JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
        JOIN pg_namespace sn ON sn.oid = s.relnamespace
        JOIN pg_class t ON t.oid = d.refobjid
        JOIN pg_namespace tn ON tn.oid = t.relnamespace
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
        WHERE d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
        ORDER BY 1, 2
        """
    ).fetchall()
    behind = []
    for seq_schema, seq, schema, table, column in owned:
        seq_state = conn.execute(
            sql.SQL("SELECT last_value, is_called FROM {}.{}").format(
                sql.Identifier(seq_schema), sql.Identifier(seq)
            )
        ).fetchone()
        top = conn.execute(
            sql.SQL("SELECT max({}) FROM {}.{}").format(
                sql.Identifier(column), sql.Identifier(schema), sql.Identifier(table)
            )
        ).fetchone()
        if seq_state is None or top is None or top[0] is None:
            continue
        next_value = seq_state[0] + (1 if seq_state[1] else 0)
        if next_value <= top[0]:
            behind.append(
                f"{seq_schema}.{seq} would give {next_value}, but {schema}.{table}.{column} has {top[0]}"
            )
    if behind:
        return CheckResult("sequences", False, "; ".join(behind[:5]))
    return CheckResult(
        "sequences", True, f"{len(owned)} owned sequences at or past their column's maximum"
    )


def foreign_keys_without_orphans(conn: psycopg.Connection) -> CheckResult:
    constraints = conn.execute(
        """
        SELECT c.conname, cn.nspname, cl.relname, pn.nspname, pl.relname,
               array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
               array(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, i)
                     JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i)
        FROM pg_constraint c
        JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_namespace cn ON cn.oid = cl.relnamespace
        JOIN pg_class pl ON pl.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = pl.relnamespace
        WHERE c.contype = 'f'
        ORDER BY 2, 3, 1
        """
    ).fetchall()
    orphans = []
    for name, schema, table, ref_schema, ref_table, columns, ref_columns in constraints:
        child = sql.SQL(", ").join(sql.SQL("c.{}").format(sql.Identifier(col)) for col in columns)
        parent = sql.SQL(", ").join(
            sql.SQL("p.{}").format(sql.Identifier(col)) for col in ref_columns
        )
        not_null = sql.SQL(" AND ").join(
            sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(col)) for col in columns
        )
        query = sql.SQL(
            "SELECT count(*) FROM {}.{} c WHERE {} AND NOT EXISTS "
            "(SELECT 1 FROM {}.{} p WHERE ({}) = ({}))"
        ).format(
            sql.Identifier(schema),
            sql.Identifier(table),
            not_null,
            sql.Identifier(ref_schema),
            sql.Identifier(ref_table),
            parent,
            child,
        )
        row = conn.execute(query).fetchone()
        if row and row[0]:
            orphans.append(f"{schema}.{table} has {row[0]} rows whose {name} points at nothing")
    if orphans:
        return CheckResult("foreign keys", False, "; ".join(orphans[:5]))
    return CheckResult("foreign keys", True, f"{len(constraints)} foreign keys, no orphaned rows")


def indexes_verified(url: DatabaseUrl, major: int, *, install_amcheck: bool) -> CheckResult:
    """pg_amcheck verifies B-tree indexes against their tables; it needs the amcheck extension."""
    try:
        tool = find_tool("pg_amcheck", major)
    except Exception:
        tool = None
    if tool is None or not shutil.which(tool):
        return CheckResult(
            "indexes (pg_amcheck)", True, "pg_amcheck is not installed", skipped=True
        )
    command = [tool, "--no-password", "--no-dependent-toast", "--heapallindexed"]
    if install_amcheck:
        command.append("--install-missing")
    result = subprocess.run(
        command, env=tool_env(url), capture_output=True, text=True, **CHILD_GROUP
    )
    if result.returncode == 0:
        return CheckResult("indexes (pg_amcheck)", True, "all B-tree indexes match their tables")
    text = (result.stderr or result.stdout).strip().splitlines()
    reason = text[-1] if text else f"exit status {result.returncode}"
    # pg_amcheck warns that it skips the database, then fails on having nothing left to check.
    if any("amcheck is not installed" in line for line in text) or (
        "amcheck" in reason and "extension" in reason
    ):
        return CheckResult(
            "indexes (pg_amcheck)",
            True,
            "the amcheck extension is not installed here",
            skipped=True,
        )
    return CheckResult("indexes (pg_amcheck)", False, reason)


def check_database_integrity(
    url: DatabaseUrl,
    manifest: Manifest | None,
    *,
    context: ServerContext | None = None,
    install_amcheck: bool = False,
) -> list[CheckResult]:
    """Run every check; a failing check never stops the others. `context` is the backup's
    server context, holding what the backup recorded besides its rows."""
    results = []
    with connect(url) as conn:
        major, _ = server_version(conn)
        if manifest is not None:
            results.append(row_counts_match(conn, manifest))
            results.extend(shape_matches(conn, manifest, context))
        else:
            results.append(
                CheckResult("row counts", True, "no backup to compare with", skipped=True)
            )
        results.append(sequences_ahead_of_rows(conn))
        results.append(foreign_keys_without_orphans(conn))
    results.append(indexes_verified(url, major, install_amcheck=install_amcheck))
    return results
