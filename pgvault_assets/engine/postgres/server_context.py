"""What a database needs from its server, kept beside its dump: roles, the database's own
properties, the extensions it loads, the server's major version.

A plain `pg_dump` holds none of these, so a dump alone cannot rebuild a database on a new
server. The context is stored as PostgreSQL's own SQL, the statements `pg_dumpall
--roles-only` and `pg_dump --create` would write for this one database, so an emergency
decryption without pgvault yields a script psql runs. Its first line is a comment holding the
same facts as JSON: a restore reads those to check the new server and create only what is
missing, rendering the very statements the script holds.

Password hashes are secrets: they live only inside the encrypted object, never in the
manifest, a log line or an error.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import date, datetime

import psycopg

from pgvault_assets.engine.basics import names
from pgvault_assets.engine.postgres.postgres import one_row
from pgvault_assets.engine.vault.manifest import (
    PASSWORD_MODES,
    PASSWORDS_EXCLUDED,
    PASSWORDS_INCLUDED,
    PASSWORDS_UNREADABLE,
    Manifest,
    ServerContextRecord,
    server_context_encryption_context,
)
from pgvault_assets.engine.vault.pipeline import HashingReader, decrypt_stream, encrypt_stream
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import IntegrityError, RestoreFailed

log = logging.getLogger(__name__)

HEADER = "-- pgvault-server-context: "
# Settings whose value is a list: each element is its own literal, as pg_dump writes them.
_LIST_SETTINGS = frozenset(
    {
        "search_path",
        "temp_tablespaces",
        "session_preload_libraries",
        "local_preload_libraries",
        "shared_preload_libraries",
    }
)


@dataclass(frozen=True)
class Role:
    name: str
    superuser: bool
    inherit: bool
    createrole: bool
    createdb: bool
    login: bool
    replication: bool
    bypassrls: bool
    connection_limit: int
    valid_until: str | None = None
    settings: tuple[str, ...] = ()
    password: str | None = field(default=None, repr=False)

    def attributes(self) -> str:
        flags = (
            ("SUPERUSER", self.superuser),
            ("INHERIT", self.inherit),
            ("CREATEROLE", self.createrole),
            ("CREATEDB", self.createdb),
            ("LOGIN", self.login),
            ("REPLICATION", self.replication),
            ("BYPASSRLS", self.bypassrls),
        )
        words = [word if on else f"NO{word}" for word, on in flags]
        if self.connection_limit != -1:
            words.append(f"CONNECTION LIMIT {self.connection_limit}")
        return " ".join(words)

    def statements(self) -> list[str]:
        # A new role has none of these; saying NO... for them takes a superuser, which a
        # restore onto a managed server does not have.
        defaults = ("NOSUPERUSER", "NOREPLICATION", "NOBYPASSRLS")
        words = " ".join(word for word in self.attributes().split() if word not in defaults)
        alter = f"ALTER ROLE {quote_ident(self.name)} WITH {words}"
        if self.password is not None:
            alter += f" PASSWORD {quote_literal(self.password)}"
        if self.valid_until is not None:
            alter += f" VALID UNTIL {quote_literal(self.valid_until)}"
        return [
            f"CREATE ROLE {quote_ident(self.name)};",
            alter + ";",
            *(f"ALTER ROLE {quote_ident(self.name)} SET {setting_sql(s)};" for s in self.settings),
        ]


@dataclass(frozen=True)
class Membership:
    group: str
    member: str
    admin: bool

    def statement(self) -> str:
        admin = " WITH ADMIN OPTION" if self.admin else ""
        return f"GRANT {quote_ident(self.group)} TO {quote_ident(self.member)}{admin};"


@dataclass(frozen=True)
class Grant:
    """One privilege of the database's ACL; `grantee` None is PUBLIC."""

    grantee: str | None
    privilege: str
    grantable: bool


@dataclass(frozen=True)
class DatabaseProperties:
    name: str
    owner: str
    encoding: str
    collate: str
    ctype: str
    connection_limit: int = -1
    locale_provider: str = "libc"
    icu_locale: str | None = None
    acl: tuple[Grant, ...] | None = None
    comment: str | None = None
    settings: tuple[str, ...] = ()
    role_settings: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def create_statements(self, name: str) -> list[str]:
        """`CREATE DATABASE` with the source's encoding and locale, then its owner."""
        parts = [
            f"CREATE DATABASE {quote_ident(name)} WITH TEMPLATE = template0",
            f"ENCODING = {quote_literal(self.encoding)}",
        ]
        if self.locale_provider == "icu":
            parts.append("LOCALE_PROVIDER = icu")
            if self.icu_locale is not None:
                parts.append(f"ICU_LOCALE = {quote_literal(self.icu_locale)}")
        parts.append(f"LC_COLLATE = {quote_literal(self.collate)}")
        parts.append(f"LC_CTYPE = {quote_literal(self.ctype)}")
        if self.connection_limit != -1:
            parts.append(f"CONNECTION LIMIT = {self.connection_limit}")
        return [
            " ".join(parts) + ";",
            f"ALTER DATABASE {quote_ident(name)} OWNER TO {quote_ident(self.owner)};",
        ]

    def grant_statements(self, name: str) -> list[str]:
        """The comment and ACL, as pg_dump writes them: revoke the defaults, grant the rest."""
        db = quote_ident(name)
        out = []
        if self.comment is not None:
            out.append(f"COMMENT ON DATABASE {db} IS {quote_literal(self.comment)};")
        if self.acl is not None:
            out.append(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC;")
            out.append(f"REVOKE ALL ON DATABASE {db} FROM {quote_ident(self.owner)};")
            for grant in self.acl:
                grantee = "PUBLIC" if grant.grantee is None else quote_ident(grant.grantee)
                option = " WITH GRANT OPTION" if grant.grantable else ""
                out.append(f"GRANT {grant.privilege} ON DATABASE {db} TO {grantee}{option};")
        return out

    def setting_statements(self, name: str) -> list[str]:
        db = quote_ident(name)
        out = [f"ALTER DATABASE {db} SET {setting_sql(s)};" for s in self.settings]
        for role, settings in self.role_settings:
            out.extend(
                f"ALTER ROLE {quote_ident(role)} IN DATABASE {db} SET {setting_sql(s)};"
                for s in settings
            )
        return out


@dataclass(frozen=True)
class ServerContext:
    server_major: int
    passwords: str
    database: DatabaseProperties
    roles: tuple[Role, ...] = ()
    memberships: tuple[Membership, ...] = ()
    extensions: tuple[tuple[str, str], ...] = ()
    # The database's owners, grants, policies, large objects and comments as lines (see
    # engine/postgres/shape.py), to compare a restored copy with; empty in backups that predate them.
    objects: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def to_sql(self) -> bytes:
        """The script: the facts as a JSON comment, then the statements psql runs."""
        facts = json.dumps(asdict(self), sort_keys=True, ensure_ascii=True)
        name = self.database.name
        lines = [
            HEADER + facts,
            f"-- What database {name} needs from a PostgreSQL {self.server_major} server.",
            f"-- Role password hashes: {self.passwords}.",
            "-- Run with psql on the new server's postgres database (roles that exist already",
            f"-- fail to create and are left as they are), then restore {names.OBJECT_NAME}",
            f"-- into {name}.",
            "",
            "-- Roles",
            *(statement for role in self.roles for statement in role.statements()),
            "",
            "-- Role memberships",
            *(membership.statement() for membership in self.memberships),
            "",
            "-- Extensions the dump creates (each must be available on the server):",
            *(f"--   {extension} {version}" for extension, version in self.extensions),
            "",
            "-- The database",
            *self.database.create_statements(name),
            *self.database.grant_statements(name),
            "",
            "-- Settings (pgvault applies them after the dump is restored)",
            *self.database.setting_statements(name),
            "",
        ]
        return "\n".join(lines).encode()

    @classmethod
    def from_sql(cls, raw: bytes) -> ServerContext:
        first = raw.split(b"\n", 1)[0].decode(errors="replace")
        if not first.startswith(HEADER):
            raise IntegrityError("the server context has no pgvault header; do not restore it")
        try:
            data = json.loads(first[len(HEADER) :])
            db = data["database"]
            context = cls(
                server_major=int(data["server_major"]),
                passwords=str(data["passwords"]),
                database=DatabaseProperties(
                    **{
                        **db,
                        "acl": None
                        if db["acl"] is None
                        else tuple(Grant(**grant) for grant in db["acl"]),
                        "settings": tuple(db["settings"]),
                        "role_settings": tuple(
                            (role, tuple(settings)) for role, settings in db["role_settings"]
                        ),
                    }
                ),
                roles=tuple(
                    Role(**{**role, "settings": tuple(role["settings"])}) for role in data["roles"]
                ),
                memberships=tuple(Membership(**m) for m in data["memberships"]),
                extensions=tuple((str(n), str(v)) for n, v in data["extensions"]),
                objects={
                    str(section): tuple(str(line) for line in lines)
                    for section, lines in data.get("objects", {}).items()
                },
            )
        except (ValueError, KeyError, TypeError):
            raise IntegrityError("the server context is malformed; do not restore it") from None
        if context.passwords not in PASSWORD_MODES:
            raise IntegrityError("the server context is malformed; do not restore it")
        return context


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _split_list(value: str) -> list[str]:
    """A list setting's elements as PostgreSQL stores them (`"$user", public`)."""
    items, current, quoted, i = [], [], False, 0
    while i < len(value):
        char = value[i]
        if quoted:
            if char == '"' and value[i + 1 : i + 2] == '"':
                current.append('"')
                i += 1
            elif char == '"':
                quoted = False
            else:
                current.append(char)
        elif char == '"':
            quoted = True
        elif char == ",":
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        i += 1
    items.append("".join(current).strip())
    return [item for item in items if item]


def setting_sql(item: str) -> str:
    """`name=value` from pg_db_role_setting as `name TO 'value'`."""
    name, _, value = item.partition("=")
    if name.lower() in _LIST_SETTINGS:
        values = ", ".join(quote_literal(v) for v in _split_list(value)) or "''"
    else:
        values = quote_literal(value)
    return f"{quote_ident(name)} TO {values}"


# --------------------------------------------------------------------------------------------
# Capture, inside the dump's snapshot
# --------------------------------------------------------------------------------------------

# Roles the database uses: its owner, those pg_shdepend records for its objects (owners,
# ACL grantees, policy roles, default privileges), those with settings in it; then their
# members, and every group any of those belongs to. The bootstrap superuser and the
# predefined pg_* roles exist on every server and are left out.
_ROLES = """
WITH RECURSIVE used(oid) AS (
    SELECT refobjid FROM pg_shdepend
    WHERE refclassid = 'pg_authid'::regclass
      AND (dbid = %(db)s OR (dbid = 0 AND classid = 'pg_database'::regclass AND objid = %(db)s))
    UNION SELECT datdba FROM pg_database WHERE oid = %(db)s
    UNION SELECT setrole FROM pg_db_role_setting WHERE setdatabase = %(db)s AND setrole <> 0
), down(oid) AS (
    SELECT oid FROM used
    UNION SELECT m.member FROM pg_auth_members m JOIN down ON m.roleid = down.oid
), up(oid) AS (
    SELECT oid FROM down
    UNION SELECT m.roleid FROM pg_auth_members m JOIN up ON m.member = up.oid
)
SELECT r.oid, r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb,
       r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit,
       CASE WHEN r.rolvaliduntil IS NULL THEN NULL
            WHEN isfinite(r.rolvaliduntil) THEN
                to_char(r.rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'
            ELSE r.rolvaliduntil::text END,
       coalesce((SELECT s.setconfig FROM pg_db_role_setting s
                 WHERE s.setdatabase = 0 AND s.setrole = r.oid), '{}')
FROM pg_roles r JOIN up USING (oid)
WHERE r.oid <> 10 AND NOT starts_with(r.rolname, 'pg_')
ORDER BY r.rolname
"""

_MEMBERSHIPS = """
SELECT pg_get_userbyid(m.roleid), pg_get_userbyid(m.member), m.admin_option
FROM pg_auth_members m
WHERE m.member = ANY(%(roles)s)
  AND (m.roleid = ANY(%(roles)s) OR starts_with(pg_get_userbyid(m.roleid), 'pg_'))
ORDER BY 1, 2
"""


def capture(conn: psycopg.Connection, *, include_passwords: bool = True) -> ServerContext:
    """Read the context of the connected database (call it inside the dump's snapshot)."""
    version_num = int(one_row(conn, "SELECT current_setting('server_version_num')")[0])
    icu = "d.datlocprovider::text, d.daticulocale" if version_num >= 150000 else "'c', NULL"
    row = one_row(
        conn,
        f"""
        SELECT d.oid, d.datname, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding),
               d.datcollate, d.datctype, d.datconnlimit, d.datacl IS NULL,
               shobj_description(d.oid, 'pg_database'), {icu}
        FROM pg_database d WHERE d.datname = current_database()
        """,
    )
    db_oid = row[0]
    acl = None
    if not row[7]:
        acl = tuple(
            Grant(grantee, privilege, grantable)
            for grantee, privilege, grantable in conn.execute(
                """
                SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
                       a.privilege_type, a.is_grantable
                FROM pg_database d, aclexplode(d.datacl) a WHERE d.oid = %s
                ORDER BY 1 NULLS FIRST, 2
                """,
                (db_oid,),
            ).fetchall()
        )
    settings: tuple[str, ...] = ()
    role_settings = []
    for role, config in conn.execute(
        """
        SELECT CASE WHEN setrole = 0 THEN NULL ELSE pg_get_userbyid(setrole) END, setconfig
        FROM pg_db_role_setting WHERE setdatabase = %s ORDER BY 1 NULLS FIRST
        """,
        (db_oid,),
    ).fetchall():
        if role is None:
            settings = tuple(config)
        else:
            role_settings.append((role, tuple(config)))
    database = DatabaseProperties(
        name=row[1],
        owner=row[2],
        encoding=row[3],
        collate=row[4],
        ctype=row[5],
        connection_limit=row[6],
        locale_provider="icu" if row[9] == "i" else "libc",
        icu_locale=row[10] if row[9] == "i" else None,
        acl=acl,
        comment=row[8],
        settings=settings,
        role_settings=tuple(role_settings),
    )
    found = conn.execute(_ROLES, {"db": db_oid}).fetchall()
    oids = [r[0] for r in found]
    passwords: dict[str, str | None] = {}
    if not include_passwords:
        mode = PASSWORDS_EXCLUDED
    elif one_row(conn, "SELECT has_table_privilege('pg_catalog.pg_authid', 'SELECT')")[0]:
        mode = PASSWORDS_INCLUDED
        passwords = dict(
            conn.execute(
                "SELECT rolname, rolpassword FROM pg_catalog.pg_authid WHERE oid = ANY(%s)",
                (oids,),
            ).fetchall()
        )
    else:
        mode = PASSWORDS_UNREADABLE
    roles = tuple(
        Role(
            name=r[1],
            superuser=r[2],
            inherit=r[3],
            createrole=r[4],
            createdb=r[5],
            login=r[6],
            replication=r[7],
            bypassrls=r[8],
            connection_limit=r[9],
            valid_until=r[10],
            settings=tuple(r[11]),
            password=passwords.get(r[1]),
        )
        for r in found
    )
    memberships = tuple(
        Membership(group, member, admin)
        for group, member, admin in conn.execute(_MEMBERSHIPS, {"roles": oids}).fetchall()
    )
    extensions = tuple(
        (name, version)
        for name, version in conn.execute(
            "SELECT extname, extversion FROM pg_extension ORDER BY extname"
        ).fetchall()
    )
    return ServerContext(
        server_major=version_num // 10000,
        passwords=mode,
        database=database,
        roles=roles,
        memberships=memberships,
        extensions=extensions,
    )


# --------------------------------------------------------------------------------------------
# Store and read back
# --------------------------------------------------------------------------------------------


def store_context(
    vault: Vault,
    day: date,
    context: ServerContext,
    *,
    level: int,
    retain_until: datetime | None,
) -> ServerContextRecord:
    """Encrypt and store the context beside the dump (committed; the manifest comes after)."""
    key = names.server_context_key(vault.environment, day)
    writer = vault.store.open_writer(key, retain_until=retain_until)
    try:
        result = encrypt_stream(
            io.BytesIO(context.to_sql()),
            writer,
            vault.encryption_keys(),
            server_context_encryption_context(vault.environment, day),
            level=level,
        )
        version_id = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return ServerContextRecord(
        object_key=key,
        sha256=result.sha256,
        size_bytes=result.stored_bytes,
        passwords=context.passwords,
        object_version_id=version_id,
    )


def read_context(vault: Vault, manifest: Manifest) -> ServerContext | None:
    """The backup's server context, its checksum checked and decrypted; None for a backup
    taken before pgvault kept one."""
    record = manifest.server_context
    if record is None:
        return None
    with contextlib.closing(
        vault.store.open_reader(record.object_key, record.object_version_id)
    ) as raw:
        reader = HashingReader(raw)
        sealed = io.BytesIO()
        while chunk := reader.read(1024 * 1024):
            sealed.write(chunk)
    if reader.size != record.size_bytes or reader.hexdigest() != record.sha256:
        raise IntegrityError(
            f"the server context of backup {manifest.date} does not match its manifest's size "
            "and SHA-256 (truncated or replaced); do not restore it, take or pick another backup"
        )
    sealed.seek(0)
    plain = b"".join(
        decrypt_stream(
            sealed,
            vault.decryption_keys(manifest),
            server_context_encryption_context(manifest.environment, manifest.date),
        )
    )
    return ServerContext.from_sql(plain)


# --------------------------------------------------------------------------------------------
# Checks against the server a restore goes to; none changes anything
# --------------------------------------------------------------------------------------------


def major_version_note(source: int, target: int) -> str | None:
    """Refuse an older server; say so when the server is newer (pg_restore-style upgrade)."""
    if target < source:
        raise RestoreFailed(
            f"the backup was taken on PostgreSQL {source} and this server runs PostgreSQL "
            f"{target}, an older major that cannot load it; restore onto PostgreSQL {source} "
            "or newer"
        )
    if target > source:
        return (
            f"the backup was taken on PostgreSQL {source} and is restored onto PostgreSQL "
            f"{target}, a newer major; check the application against it"
        )
    return None


def refuse_missing_extensions(conn: psycopg.Connection, context: ServerContext) -> list[str]:
    """Refuse when the server lacks an extension the dump creates; return version notes."""
    available: dict[str, set[str]] = {}
    for name, version in conn.execute(
        "SELECT name, version FROM pg_available_extension_versions"
    ).fetchall():
        available.setdefault(name, set()).add(version)
    missing = [name for name, _ in context.extensions if name not in available]
    if missing:
        raise RestoreFailed(
            f"this server lacks the extension{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} that the backup needs; install "
            f"{'them' if len(missing) > 1 else 'it'} on the server (its package, e.g. "
            "postgresql-contrib) and run the restore again; nothing was changed"
        )
    return [
        f"extension {name} {version} of the backup is not available here; the server's "
        "default version will be created"
        for name, version in context.extensions
        if version not in available[name]
    ]


@dataclass(frozen=True)
class RolePlan:
    """What a restore does about the backup's roles: create the missing, report the rest."""

    missing: tuple[Role, ...]
    memberships: tuple[Membership, ...]
    warnings: tuple[str, ...]


def plan_roles(conn: psycopg.Connection, context: ServerContext) -> RolePlan:
    """Roles to create and memberships to grant (only those of roles created here: an
    existing role is never altered); differences of existing roles become warnings."""
    existing = {
        row[0]: row[1:]
        for row in conn.execute(
            """
            SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,
                   rolreplication, rolbypassrls, rolconnlimit
            FROM pg_roles WHERE rolname = ANY(%s)
            """,
            ([role.name for role in context.roles],),
        ).fetchall()
    }
    warnings = []
    missing = []
    for role in context.roles:
        found = existing.get(role.name)
        if found is None:
            missing.append(role)
            continue
        here = Role(role.name, *found)
        if here.attributes() != role.attributes():
            warnings.append(
                f"role {role.name} exists here as {here.attributes()}, in the backup as "
                f"{role.attributes()}; left as it is"
            )
    created = {role.name for role in missing}
    held = {
        (group, member)
        for group, member in conn.execute(
            """
            SELECT pg_get_userbyid(roleid), pg_get_userbyid(member) FROM pg_auth_members
            WHERE pg_get_userbyid(member) = ANY(%s)
            """,
            ([role.name for role in context.roles],),
        ).fetchall()
    }
    grants = []
    for membership in context.memberships:
        if membership.member in created:
            grants.append(membership)
        elif (membership.group, membership.member) not in held:
            warnings.append(
                f"role {membership.member} is not a member of {membership.group} here as it "
                "was in the backup; left as it is"
            )
    return RolePlan(tuple(missing), tuple(grants), tuple(warnings))


def refuse_missing_privileges(
    conn: psycopg.Connection, plan: RolePlan, owners: set[str] | frozenset[str] = frozenset()
) -> None:
    """Say which privilege the restoring role lacks before anything is created. `owners`
    are the roles the backup's objects belong to: handing an object to a role takes
    membership in it, which the restore grants itself only for the roles it creates."""
    user, superuser, createrole, createdb = one_row(
        conn,
        "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
        "WHERE rolname = current_user",
    )
    if superuser:
        return
    if not createdb:
        raise RestoreFailed(
            f"the restoring role {user} lacks CREATEDB, which creating the restored database "
            f"needs; ALTER ROLE {user} CREATEDB, or restore as a role that has it"
        )
    if plan.missing and not createrole:
        raise RestoreFailed(
            f"the restoring role {user} lacks CREATEROLE, which creating the backup's missing "
            f"roles ({', '.join(role.name for role in plan.missing)}) needs; ALTER ROLE "
            f"{user} CREATEROLE, create those roles first, or restore as a role that has it"
        )
    created = {role.name for role in plan.missing}
    foreign = [
        name
        for (name,) in conn.execute(
            # pg_database_owner is whoever owns the database, as the restore makes it.
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) "
            "AND NOT starts_with(rolname, 'pg_') "
            "AND NOT pg_has_role(current_user, oid, 'MEMBER') ORDER BY 1",
            (sorted(owners - created),),
        ).fetchall()
    ]
    if foreign:
        roles = ", ".join(foreign)
        raise RestoreFailed(
            f"the restoring role {user} is not a member of {roles}, which own"
            f"{'s' if len(foreign) == 1 else ''} objects in the backup and exist here already; "
            f"GRANT {roles} TO {user}, or restore as a superuser"
        )
    elevated = [r.name for r in plan.missing if r.superuser or r.replication or r.bypassrls]
    if elevated:
        raise RestoreFailed(
            f"the restoring role {user} is not a superuser, which creating the roles "
            f"{', '.join(elevated)} (SUPERUSER, REPLICATION or BYPASSRLS) needs; create them "
            "first, or restore as a superuser"
        )
