"""What a database is besides its rows, as comparable lines: owners, grants, row-level
security, extensions, large objects, comments, its settings and the roles it needs.

Row counts and checksums say the data came back; an application also needs its owners,
grants and policies, or it starts refusing its own users. Each section is a sorted tuple of
plain lines naming objects by schema-qualified name (never by OID, which differs on another
server, except for large objects, whose OIDs a dump keeps). A backup records these lines in
the dump's snapshot; a restore, `check-database-integrity --date` and `compare` read them
again and report the lines that differ. Objects that belong to an extension are the
extension's business and are left out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import psycopg
from psycopg.pq import TransactionStatus

from pgvault_assets.engine.postgres import server_context as sc

# The sections, in the order reports list them.
OWNERS = "owners"
GRANTS = "grants"
POLICIES = "row-level security"
EXTENSIONS = "extensions"
LARGE_OBJECTS = "large objects"
COMMENTS = "comments"
DATABASE = "database"
SETTINGS = "settings"
ROLES = "roles"
SECTIONS = (
    OWNERS,
    GRANTS,
    POLICIES,
    EXTENSIONS,
    LARGE_OBJECTS,
    COMMENTS,
    DATABASE,
    SETTINGS,
    ROLES,
)
# Read from the database's own catalogs; the rest come from its server context.
OBJECT_SECTIONS = (OWNERS, GRANTS, POLICIES, LARGE_OBJECTS, COMMENTS)

Shape = dict[str, tuple[str, ...]]

# Objects of the application: not PostgreSQL's own, not an extension's members.
_USER_SCHEMA = "nspname <> 'information_schema' AND NOT starts_with(nspname, 'pg_')"
_NOT_EXTENSION = """NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = {cls}::regclass
    AND e.objid = {oid} AND e.deptype = 'e')"""

_OBJECTS = f"""
SELECT 'schema', format('%%I', n.nspname), n.nspowner, n.nspacl, 'n'
FROM pg_namespace n
WHERE {_USER_SCHEMA} AND {_NOT_EXTENSION.format(cls="'pg_namespace'", oid="n.oid")}
UNION ALL
SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view'
                      WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence'
                      ELSE 'foreign table' END,
       format('%%I.%%I', n.nspname, c.relname), c.relowner, c.relacl,
       CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_USER_SCHEMA}
  AND {_NOT_EXTENSION.format(cls="'pg_class'", oid="c.oid")}
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END,
       format('%%I.%%I(%%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
       p.proowner, p.proacl, 'f'
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE {_USER_SCHEMA} AND {_NOT_EXTENSION.format(cls="'pg_proc'", oid="p.oid")}
  -- a range type's constructors are part of the type (and owned by the bootstrap superuser)
  AND NOT EXISTS (SELECT 1 FROM pg_depend i WHERE i.classid = 'pg_proc'::regclass
                  AND i.objid = p.oid AND i.deptype = 'i')
UNION ALL
SELECT 'type', format('%%I.%%I', n.nspname, t.typname), t.typowner, t.typacl, 'T'
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE {_USER_SCHEMA} AND t.typtype IN ('b', 'd', 'e', 'r', 'c')
  AND t.typelem = 0 AND (t.typrelid = 0 OR
      (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
  AND {_NOT_EXTENSION.format(cls="'pg_type'", oid="t.oid")}
"""

# An object's privileges, with PostgreSQL's default spelled out: a dump turns a default ACL
# (NULL) into nothing and an explicit one into GRANTs, and both must compare equal when
# they grant the same.
_GRANTS = f"""
SELECT o.kind || ' ' || o.name || ': ' || a.privilege_type
       || CASE WHEN a.is_grantable THEN ' (grantable)' ELSE '' END
       || ' to ' || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
FROM ({_OBJECTS}) AS o(kind, name, owner, acl, acl_kind),
     aclexplode(coalesce(o.acl, acldefault(o.acl_kind::"char", o.owner))) a
UNION ALL
SELECT 'column ' || format('%%I.%%I.%%I', n.nspname, c.relname, att.attname) || ': '
       || a.privilege_type || CASE WHEN a.is_grantable THEN ' (grantable)' ELSE '' END
       || ' to ' || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(att.attacl) a
WHERE att.attacl IS NOT NULL AND NOT att.attisdropped AND {_USER_SCHEMA}
UNION ALL
SELECT 'large object ' || m.oid || ': ' || a.privilege_type
       || CASE WHEN a.is_grantable THEN ' (grantable)' ELSE '' END
       || ' to ' || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
FROM pg_largeobject_metadata m, aclexplode(coalesce(m.lomacl, acldefault('L', m.lomowner))) a
UNION ALL
SELECT 'default privileges of ' || pg_get_userbyid(d.defaclrole)
       || CASE WHEN n.oid IS NULL THEN '' ELSE ' in schema ' || quote_ident(n.nspname) END
       || ' on '
       || d.defaclobjtype::text || ': ' || a.privilege_type
       || CASE WHEN a.is_grantable THEN ' (grantable)' ELSE '' END
       || ' to ' || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace,
     aclexplode(d.defaclacl) a
"""

_OWNERS = f"""
SELECT o.kind || ' ' || o.name || ' owned by ' || pg_get_userbyid(o.owner)
FROM ({_OBJECTS}) AS o(kind, name, owner, acl, acl_kind)
UNION ALL
SELECT 'large object ' || oid || ' owned by ' || pg_get_userbyid(lomowner)
FROM pg_largeobject_metadata
"""

_POLICIES = f"""
SELECT format('table %%I.%%I', n.nspname, c.relname) || ': row level security '
       || CASE WHEN c.relforcerowsecurity THEN 'enabled and forced' ELSE 'enabled' END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relrowsecurity AND {_USER_SCHEMA}
UNION ALL
SELECT format('policy %%I on %%I.%%I', p.policyname, p.schemaname, p.tablename) || ': '
       || p.permissive || ' ' || p.cmd || ' to ' || array_to_string(p.roles, ', ')
       || coalesce(' using ' || p.qual, '') || coalesce(' with check ' || p.with_check, '')
FROM pg_policies p
"""

_COMMENTS = """
SELECT pg_describe_object(d.classoid, d.objoid, d.objsubid) || ': ' || d.description
FROM pg_description d
WHERE d.objoid >= 16384  -- PostgreSQL's own objects describe themselves
  AND d.classoid <> 'pg_extension'::regclass  -- the extension's, from its control file
  AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = d.classoid
                  AND e.objid = d.objoid AND e.deptype = 'e')
  -- a dump leaves out comments on constraints a child inherits
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE d.classoid = 'pg_constraint'::regclass
                  AND c.oid = d.objoid AND NOT c.conislocal)
  -- nor comments whose object is gone (DROP SUBSCRIPTION leaves its comment behind)
  AND pg_describe_object(d.classoid, d.objoid, d.objsubid) IS NOT NULL
"""

# Contents are read only when comparing two live databases: a backup never reads a large
# object twice (pg_dump reads it once), so the record holds owners, grants and comments.
_LARGE_OBJECTS = """
SELECT 'large object ' || oid || CASE WHEN %(contents)s
       THEN ' of ' || octet_length(lo_get(oid)) || ' bytes, md5 ' || md5(lo_get(oid))
       ELSE '' END
FROM pg_largeobject_metadata
"""


def _lines(
    conn: psycopg.Connection, query: str, params: Mapping[str, object] | None = None
) -> tuple[str, ...]:
    # Always with parameters, so the queries' `%%` reach the server as `%`.
    return tuple(sorted(row[0] for row in conn.execute(query, params or {}).fetchall()))


def read_objects(conn: psycopg.Connection, *, contents: bool = False) -> Shape:
    """The sections read from the database's own catalogs (call it in the dump's snapshot).

    Names come schema-qualified whatever the session's search_path (a database setting may
    change it), so two databases, or a backup and a restore, name objects alike."""
    (search_path,) = conn.execute("SELECT current_setting('search_path')").fetchone() or ("",)
    conn.execute("SELECT set_config('search_path', 'pg_catalog', false)")
    try:
        return {
            OWNERS: _lines(conn, _OWNERS),
            GRANTS: _lines(conn, _GRANTS),
            POLICIES: _lines(conn, _POLICIES),
            LARGE_OBJECTS: _lines(conn, _LARGE_OBJECTS, {"contents": contents}),
            COMMENTS: _lines(conn, _COMMENTS),
        }
    finally:
        # After an error the transaction refuses every statement: leave the error as it is.
        if conn.info.transaction_status != TransactionStatus.INERROR:
            conn.execute("SELECT set_config('search_path', %s, false)", (search_path,))


def _setting(item: str) -> str:
    """`name=value` as the name and a fingerprint of the value: settings may hold secrets
    (an application's `app.jwt_secret`), and these lines reach logs and errors."""
    name, _, value = item.partition("=")
    return f"{name} (value {hashlib.sha256(value.encode()).hexdigest()[:12]})"


def context_sections(context: sc.ServerContext) -> Shape:
    """The sections a server context holds, named alike whatever the database is called."""
    db = context.database
    locale = f"ICU {db.icu_locale}" if db.locale_provider == "icu" else "libc"
    database = [
        f"owned by {db.owner}",
        f"encoding {db.encoding}, collate {db.collate}, ctype {db.ctype}, locale provider {locale}",
        f"connection limit {db.connection_limit}",
        f"comment: {db.comment}" if db.comment is not None else "no comment",
    ]
    acl = db.acl
    if acl is None:  # the default: the owner may do everything, PUBLIC may connect
        database.append("default privileges")
    else:
        database += [
            f"{g.privilege}{' (grantable)' if g.grantable else ''} to {g.grantee or 'PUBLIC'}"
            for g in acl
        ]
    settings = [f"database: {_setting(item)}" for item in db.settings] + [
        f"role {role}: {_setting(item)}" for role, items in db.role_settings for item in items
    ]
    roles = [f"{role.name}: {role.attributes()}" for role in context.roles] + [
        f"{m.member} member of {m.group}{' with admin option' if m.admin else ''}"
        for m in context.memberships
    ]
    return {
        EXTENSIONS: tuple(sorted(f"{name} {version}" for name, version in context.extensions)),
        DATABASE: tuple(sorted(database)),
        SETTINGS: tuple(sorted(settings)),
        ROLES: tuple(sorted(roles)),
    }


def read_shape(conn: psycopg.Connection, *, contents: bool = False) -> Shape:
    """Every section of the connected database, as it is now."""
    context = sc.capture(conn, include_passwords=False)
    return {**read_objects(conn, contents=contents), **context_sections(context)}


def recorded_shape(context: sc.ServerContext) -> Shape:
    """The sections a backup recorded: all of them, or only those of its server context for
    a backup taken before pgvault recorded the database's objects."""
    return {**context.objects, **context_sections(context)}


def _oneline(line: str, width: int = 160) -> str:
    flat = " ".join(line.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@dataclass(frozen=True)
class SectionDifference:
    section: str
    missing: tuple[str, ...]  # in the expected shape only
    extra: tuple[str, ...]  # in the actual shape only

    def describe(self, expected: str, actual: str, limit: int = 3) -> str:
        """The first lines that differ, on one line however the comments and policies read."""
        parts = [f"{_oneline(line)} ({expected} only)" for line in self.missing[:limit]]
        parts += [
            f"{_oneline(line)} ({actual} only)" for line in self.extra[: max(0, limit - len(parts))]
        ]
        more = len(self.missing) + len(self.extra) - len(parts)
        return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def only_versions_differ(difference: SectionDifference) -> bool:
    """Extensions by the same names at other versions: a new server's packages may ship
    another version, which is said, not refused."""
    names = {line.rsplit(" ", 1)[0] for line in difference.missing}
    return difference.section == EXTENSIONS and names == {
        line.rsplit(" ", 1)[0] for line in difference.extra
    }


def _role_names(lines: Iterable[str]) -> set[str]:
    return {line.split(": ", 1)[0] for line in lines if ": " in line}


def matters(difference: SectionDifference) -> bool:
    """Whether a difference fails a check, or is only said.

    Said only: extensions at other versions (a new server's packages); roles that exist on
    both sides with other attributes or memberships (a restore never alters an existing
    role, and a restoring role that is not a superuser owns the extensions it created).
    A role the database needs that is missing altogether matters.
    """
    if only_versions_differ(difference):
        return False
    if difference.section == ROLES:
        return bool(_role_names(difference.missing) - _role_names(difference.extra))
    return True


def differences(
    expected: Shape, actual: Shape, sections: Iterable[str] = SECTIONS
) -> list[SectionDifference]:
    """The sections that differ, each with the lines only one side has. A section the
    expected shape lacks (an older backup's record) is not compared."""
    found = []
    for section in sections:
        if section not in expected or section not in actual:
            continue
        want, have = set(expected[section]), set(actual[section])
        if want != have:
            found.append(
                SectionDifference(section, tuple(sorted(want - have)), tuple(sorted(have - want)))
            )
    return found
