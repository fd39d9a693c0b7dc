"""Make a server ready for a backup from its recorded context: locale, roles, the database's
properties, and the shape check before the swap. A role a restore creates is marked in its
comment until the swap, so a dead run's roles are recognised and dropped by the next run.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable

import psycopg
from psycopg import sql

from pgvault_assets.engine.postgres import server_context as sc
from pgvault_assets.engine.postgres import shape
from pgvault_assets.engine.postgres.postgres import (
    connect,
    one_row,
)
from pgvault_assets.errors import PgvaultError, RestoreFailed
from pgvault_assets.settings import DatabaseUrl

log = logging.getLogger(__name__)


# A restored copy must have these as the backup recorded them before it is swapped in.
# Roles that existed already may differ (never altered, reported by the role plan), and an
# extension may come at the new server's version (said by the extension check).
_SECTIONS_THAT_MUST_MATCH = tuple(
    section for section in shape.SECTIONS if section not in (shape.ROLES, shape.EXTENSIONS)
)


def refuse_other_shape(
    context: sc.ServerContext, restored_url: DatabaseUrl, *, refuse: bool = True
) -> None:
    """Compare the restored copy's owners, grants, policies, large objects, comments,
    properties and settings with the backup's record of them; refuse it if they differ,
    or only say so (`refuse` off)."""
    with connect(restored_url) as restored:
        found = shape.differences(
            shape.recorded_shape(context), shape.read_shape(restored), _SECTIONS_THAT_MUST_MATCH
        )
    if not found:
        return
    what = "; and in its ".join(f"{d.section}: {d.describe('backup', 'restored')}" for d in found)
    if refuse:
        raise RestoreFailed(f"the restored database differs from the backup in its {what}")
    log.warning(
        "on this newer major, the restored database differs from the backup in its %s", what
    )


def like_the_source(context: sc.ServerContext, scratch_url: DatabaseUrl) -> None:
    """Make the new database's defaults the source's before the dump: a dump never drops the
    `public` schema that every new database has, so a source without one gets none here."""
    owners = context.objects.get(shape.OWNERS)
    if owners is None or any(line.startswith("schema public owned by ") for line in owners):
        return
    with connect(scratch_url) as scratch:
        scratch.execute("DROP SCHEMA IF EXISTS public")


def check_server(maintenance: psycopg.Connection, context: sc.ServerContext) -> sc.RolePlan:
    """Everything the server must offer the backup, checked before anything is created."""
    for note in sc.refuse_missing_extensions(maintenance, context):
        log.warning("%s", note)
    plan = sc.plan_roles(maintenance, context)
    owners = {context.database.owner} | {
        line.rsplit(" owned by ", 1)[1] for line in context.objects.get(shape.OWNERS, ())
    }
    sc.refuse_missing_privileges(maintenance, plan, owners)
    for warning in plan.warnings:
        log.warning("%s", warning)
    return plan


def run_statements(maintenance: psycopg.Connection, statements: list[str]) -> None:
    for statement in statements:
        maintenance.execute(statement)


# How a server refuses a database's locale: an OS locale or ICU it lacks.
_LOCALE_REFUSAL = re.compile(r"locale|collation|ICU", re.I)


def create_scratch(
    maintenance: psycopg.Connection, scratch: str, context: sc.ServerContext | None
) -> None:
    """The empty database the dump goes into, with the source's encoding and locale: a
    locale this server lacks is refused here, before any role is created."""
    if context is None:
        maintenance.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(scratch))
        )
        return
    db = context.database
    try:
        maintenance.execute(db.create_statements(scratch)[0])
    except psycopg.Error as exc:
        if exc.sqlstate is None or not _LOCALE_REFUSAL.search(str(exc)):
            raise
        locale = db.icu_locale if db.locale_provider == "icu" else db.collate
        raise RestoreFailed(
            f"this server cannot create a database with the backup's locale {locale!r} "
            f"({' '.join(str(exc).split())}); generate that locale on the server's machine "
            "(e.g. locale-gen, then restart PostgreSQL) and run the restore again; nothing "
            "was changed"
        ) from None


# A role a restore creates carries this comment, naming the restore's scratch database, until
# the restored copy is about to be swapped in: a run killed meanwhile leaves a role the next
# restore on this server recognises as a leftover once that scratch database is gone.
_CREATED_FOR = "pgvault: created for the restore into "


def create_roles(
    maintenance: psycopg.Connection,
    plan: sc.RolePlan,
    scratch: str,
    created: list[str],
    lent: list[str],
) -> None:
    """Create the missing roles, noting each in `created` at once, so a failure drops them.

    A restoring role that is not a superuser must be a member of a role to hand it
    ownership (ALTER ... OWNER TO); it is made a member of each role it creates until the
    restored copy is complete (`lent`), and no longer.
    """
    (superuser,) = one_row(
        maintenance, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    )
    for role in plan.missing:
        statements = role.statements()
        with maintenance.transaction():
            maintenance.execute(statements[0])
            maintenance.execute(
                sql.SQL("COMMENT ON ROLE {} IS {}").format(
                    sql.Identifier(role.name), sql.Literal(_CREATED_FOR + scratch)
                )
            )
            run_statements(maintenance, statements[1:])
        created.append(role.name)
        log.info("created role %s, which the backup needs", role.name)
        if not superuser and not role.superuser:
            maintenance.execute(
                sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(role.name))
            )
            lent.append(role.name)
    run_statements(maintenance, [membership.statement() for membership in plan.memberships])


def settle_roles(
    maintenance: psycopg.Connection,
    context: sc.ServerContext | None,
    created: list[str],
    lent: list[str],
    throwaway: str | None,
) -> list[sql.Composable]:
    """What the swap's transaction does to the roles, so that it happens exactly then.

    The roles the backup needs are the server's from then on: no longer marked as a run's
    leftovers (those of another, interrupted run included), or, for a throwaway target,
    marked with its name so they go with it. The restoring role leaves the roles it joined.
    """
    if context is None:
        return []
    names = [role.name for role in context.roles]
    marked = {
        name
        for (name,) in maintenance.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) "
            "AND starts_with(shobj_description(oid, 'pg_authid'), %s)",
            (names, _CREATED_FOR),
        ).fetchall()
    }
    statements: list[sql.Composable] = []
    for name in names:
        if throwaway is not None and name in created:
            mark: sql.Composable = sql.Literal(_CREATED_FOR + throwaway)
        elif name in marked:
            mark = sql.SQL("NULL")
        else:
            continue
        statements.append(sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(name), mark))
    statements += [
        sql.SQL("REVOKE {} FROM CURRENT_USER").format(sql.Identifier(name)) for name in lent
    ]
    return statements


def drop_roles_created_for(
    maintenance: psycopg.Connection,
    url: DatabaseUrl | None,
    databases: Iterable[str],
    *,
    leftovers: bool = False,
) -> tuple[str, ...]:
    """Drop the roles a restore created for any of `databases`, which are gone (a failed or
    killed restore's scratch, a throwaway target); return their names.

    Only roles still marked for one of those databases: a role a later restore used (and so
    unmarked) stays. One that has come to own something cannot be dropped: it stays, and is
    said. Over a new connection if the given one died with the restore.
    """
    databases = list(databases)
    if not databases:
        return ()
    try:
        return _drop_marked(maintenance, databases, leftovers)
    except psycopg.Error:
        if url is None:
            raise
        with contextlib.suppress(psycopg.Error, PgvaultError), connect(url) as fresh:
            return _drop_marked(fresh, databases, leftovers)
    return ()


def _drop_marked(
    maintenance: psycopg.Connection, databases: list[str], leftovers: bool
) -> tuple[str, ...]:
    dropped = []
    for name, comment in maintenance.execute(
        "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
        "WHERE shobj_description(oid, 'pg_authid') = ANY(%s) ORDER BY 1",
        ([_CREATED_FOR + database for database in databases],),
    ).fetchall():
        database = comment[len(_CREATED_FOR) :]
        try:
            maintenance.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
        except psycopg.errors.DependentObjectsStillExist as exc:
            log.warning(
                "role %s was created by a restore into %s, which is gone, but cannot be dropped "
                "(%s); drop it by hand if nothing needs it",
                name,
                database,
                " ".join(str(exc).split()),
            )
            continue
        dropped.append(name)
        if leftovers:
            log.warning(
                "dropped role %s, created by an interrupted restore into %s", name, database
            )
        else:
            log.info("dropped role %s, created for %s", name, database)
    return tuple(dropped)
