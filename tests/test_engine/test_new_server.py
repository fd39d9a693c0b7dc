"""Disaster-grade restore: a backup rebuilds its database on a server that has never seen it,
roles and database properties included, or refuses in one line and leaves nothing behind."""

from __future__ import annotations

import logging
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgvault_assets.engine import server_context as sc
from pgvault_assets.engine.backup import backup_database
from pgvault_assets.engine.manifest import (
    PASSWORDS_EXCLUDED,
    PASSWORDS_INCLUDED,
    Manifest,
    server_context_encryption_context,
)
from pgvault_assets.engine.names import manifest_key
from pgvault_assets.engine.pipeline import decrypt_stream
from pgvault_assets.engine.restore import restore_backup
from pgvault_assets.errors import IntegrityError, RestoreFailed
from pgvault_assets.settings import DatabaseUrl, load_settings
from tests.conftest import (
    PG_BIN,
    PG_SERVER_URL,
    TEST_DB_PREFIX,
    PrivateCluster,
    _drop_databases,
    admin_connect,
)
from tests.dbcompare import database_snapshot
from tests.test_engine.helpers import DAY, back_up, vault

PASSWORD = "ro-login-password-7f3a"


@dataclass(frozen=True)
class AppDatabase:
    """A database shaped like a real application's, and the server-wide roles it uses."""

    url: str
    name: str
    owner: str
    reader: str
    login: str

    @property
    def roles(self) -> tuple[str, str, str]:
        return (self.owner, self.reader, self.login)


def _drop_roles(server_url: str, names: tuple[str, ...]) -> None:
    with psycopg.connect(f"{server_url}/postgres", autocommit=True, connect_timeout=5) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def app_database(postgres_server: str) -> Iterator[AppDatabase]:
    token = uuid.uuid4().hex[:8]
    app = AppDatabase(
        url=f"{PG_SERVER_URL}/{TEST_DB_PREFIX}app_{token}",
        name=f"{TEST_DB_PREFIX}app_{token}",
        owner=f"pgvault_test_owner_{token}",
        reader=f"pgvault_test_reader_{token}",
        login=f"pgvault_test_ro_{token}",
    )
    owner, reader, login, db = (sql.Identifier(n) for n in (*app.roles, app.name))
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(owner))
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(reader))
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CONNECTION LIMIT 5 PASSWORD {} IN ROLE {}").format(
                login, sql.Literal(PASSWORD), reader
            )
        )
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, owner))
        conn.execute(sql.SQL("ALTER DATABASE {} SET statement_timeout = '5s'").format(db))
        conn.execute(
            sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path = app, public").format(login, db)
        )
        conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(db))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, reader))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS 'the application'").format(db))
    try:
        with psycopg.connect(app.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION citext")
            conn.execute("CREATE EXTENSION pgcrypto")
            conn.execute(sql.SQL("SET ROLE {}").format(owner))
            conn.execute(
                sql.SQL(
                    """
                    CREATE SCHEMA app;
                    REVOKE ALL ON SCHEMA public FROM PUBLIC;
                    CREATE TABLE app.users (
                        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                        email citext UNIQUE NOT NULL,
                        tenant text NOT NULL,
                        token bytea NOT NULL
                    );
                    COMMENT ON TABLE app.users IS 'people who sign in';
                    COMMENT ON COLUMN app.users.tenant IS 'rows a reader may see';
                    INSERT INTO app.users (email, tenant, token)
                    SELECT 'User' || i || '@Example.com', 't' || (i % 3), digest(i::text, 'sha256')
                    FROM generate_series(1, 50) i;
                    ALTER TABLE app.users ENABLE ROW LEVEL SECURITY;
                    CREATE POLICY tenant_rows ON app.users FOR SELECT TO {reader}
                        USING (tenant = current_setting('app.tenant', true));
                    CREATE TABLE app.audit (id serial PRIMARY KEY, note text);
                    INSERT INTO app.audit (note) VALUES ('created'), ('checked');
                    CREATE FUNCTION app.user_count() RETURNS bigint LANGUAGE sql STABLE
                        AS 'SELECT count(*) FROM app.users';
                    REVOKE EXECUTE ON FUNCTION app.user_count() FROM PUBLIC;
                    GRANT USAGE ON SCHEMA app TO {reader};
                    GRANT SELECT ON app.users TO {reader};
                    GRANT SELECT (id) ON app.audit TO {reader};
                    GRANT EXECUTE ON FUNCTION app.user_count() TO {reader};
                    GRANT USAGE ON SEQUENCE app.audit_id_seq TO {reader};
                    REVOKE ALL ON app.audit FROM PUBLIC;
                    """
                ).format(reader=reader)
            )
            conn.execute("SELECT lo_from_bytea(424242, 'a large object''s bytes')")
            conn.execute(sql.SQL("GRANT SELECT ON LARGE OBJECT 424242 TO {}").format(reader))
            conn.execute("COMMENT ON LARGE OBJECT 424242 IS 'an attachment'")
        yield app
    finally:
        _drop_databases([app.name])
        _drop_roles(PG_SERVER_URL, app.roles)


@pytest.fixture
def new_server(private_postgres: PrivateCluster, app_database: AppDatabase) -> Iterator[str]:
    """The private cluster as a new server that has none of the app's roles; cleaned after."""
    assert _roles_present(private_postgres.server_url, app_database.roles) == set()
    yield private_postgres.server_url
    with psycopg.connect(private_postgres.url("postgres"), autocommit=True) as conn:
        for (name,) in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, 'restored_')"
        ).fetchall():
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    _drop_roles(private_postgres.server_url, app_database.roles)


def _roles_present(server_url: str, names: tuple[str, ...]) -> set[str]:
    with psycopg.connect(f"{server_url}/postgres") as conn:
        return {
            row[0]
            for row in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(names),)
            )
        }


def _schema_dump(url: str) -> str:
    return subprocess.run(
        [
            str(PG_BIN / "pg_dump"),
            "--schema-only",
            "--no-password",
            "--restrict-key=pgvaulttest",  # else a random key per run differs
            "-d",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout


def _fetch(url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return [tuple(row) for row in conn.execute(query, params).fetchall()]


_SETTINGS = """
SELECT coalesce(pg_get_userbyid(s.setrole), '-'), s.setconfig
FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
WHERE d.datname = current_database() ORDER BY 1
"""
_DATABASE = """
SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype,
       datconnlimit, datacl::text, shobj_description(oid, 'pg_database')
FROM pg_database WHERE datname = current_database()
"""
_ROLES = """
SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
       r.rolconnlimit,
       array(SELECT pg_get_userbyid(m.roleid) FROM pg_auth_members m WHERE m.member = r.oid
             ORDER BY 1)
FROM pg_roles r WHERE r.rolname = ANY(%s) ORDER BY 1
"""
_LARGE_OBJECTS = """
SELECT m.oid::bigint, pg_get_userbyid(m.lomowner), m.lomacl::text, lo_get(m.oid),
       obj_description(m.oid, 'pg_largeobject')
FROM pg_largeobject_metadata m ORDER BY 1
"""


def _restore_to(server_url: str, name: str = "restored_app") -> str:
    target = f"{server_url}/{name}"
    restore_backup(vault(), DAY, DatabaseUrl.parse(target, "STAGING_DATABASE_URL"))
    return target


def test_a_backup_restores_onto_a_new_server_without_its_roles_exactly_as_the_source(
    local_env, app_database, new_server, caplog
):
    manifest = back_up(app_database.url)
    assert manifest.server_major == 15
    assert manifest.server_context is not None
    assert manifest.server_context.passwords == PASSWORDS_INCLUDED

    with caplog.at_level(logging.INFO):
        restored = _restore_to(new_server)

    source = app_database.url
    assert _schema_dump(restored) == _schema_dump(source)
    assert database_snapshot(restored) == database_snapshot(source)
    assert _fetch(restored, _LARGE_OBJECTS) == _fetch(source, _LARGE_OBJECTS)
    assert _fetch(restored, _SETTINGS) == _fetch(source, _SETTINGS)
    assert _fetch(restored, _DATABASE) == _fetch(source, _DATABASE)
    roles = [list(app_database.roles)]
    assert _fetch(restored, _ROLES, roles) == _fetch(source, _ROLES, roles)
    # The login role's password came along: it signs in on the new server.
    port = new_server.rsplit(":", 1)[1]
    login_url = f"postgresql://{app_database.login}:{PASSWORD}@127.0.0.1:{port}/restored_app"
    with psycopg.connect(login_url) as conn:
        assert conn.execute("SELECT current_setting('statement_timeout')").fetchone() == ("5s",)
    assert PASSWORD not in caplog.text
    assert "SCRAM-SHA-256$" not in caplog.text


def test_the_server_context_decrypts_to_sql_that_psql_runs_on_an_empty_server(
    local_env, app_database, new_server
):
    """Emergency decryption without pgvault: the context is a script psql runs as it is."""
    manifest = back_up(app_database.url)
    script = _decrypted_context(local_env, manifest)
    result = subprocess.run(
        [str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", f"{new_server}/postgres"],
        input=script,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert _roles_present(new_server, app_database.roles) == set(app_database.roles)
    renamed = f"{new_server}/{app_database.name}"
    try:
        assert _fetch(renamed, _SETTINGS) == _fetch(app_database.url, _SETTINGS)
        assert _fetch(renamed, _DATABASE) == _fetch(app_database.url, _DATABASE)
    finally:
        with psycopg.connect(f"{new_server}/postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(app_database.name))
            )


def _decrypted_context(local_env: Path, manifest: Manifest) -> bytes:
    assert manifest.server_context is not None
    with (local_env / "store" / manifest.server_context.object_key).open("rb") as sealed:
        return b"".join(
            decrypt_stream(
                sealed,
                vault().decryption_keys(manifest),
                server_context_encryption_context(manifest.environment, manifest.date),
            )
        )


def test_role_passwords_excluded_by_setting_leave_no_hash_in_the_context(
    local_env, app_database, monkeypatch
):
    monkeypatch.setenv("BACKUP_ROLE_PASSWORDS", "exclude")
    settings = load_settings()
    manifest = backup_database(
        vault(),
        DatabaseUrl.parse(app_database.url, "DATABASE_URL"),
        DAY,
        enforce_date=False,
        role_passwords=settings.role_passwords == "include",
    )
    assert manifest.server_context is not None
    assert manifest.server_context.passwords == PASSWORDS_EXCLUDED
    script = _decrypted_context(local_env, manifest)
    assert b"SCRAM-SHA-256$" not in script and b"md5" not in script
    assert app_database.login.encode() in script

    included = back_up(app_database.url)
    assert b"SCRAM-SHA-256$" in _decrypted_context(local_env, included)


def _forge_context(local_env: Path, manifest: Manifest, **changes: Any) -> None:
    """Store a changed server context for the backup and a manifest that vouches for it: what
    a new server lacking something sees, without uninstalling anything from this machine."""
    v = vault()
    context = sc.read_context(v, manifest)
    assert context is not None
    record = sc.store_context(v, DAY, replace(context, **changes), level=1, retain_until=None)
    (local_env / "store" / manifest_key("test", DAY)).write_bytes(
        replace(manifest, server_context=record).to_json()
    )


@pytest.mark.parametrize(
    ("lacking", "message"),
    [
        ("extension", r"lacks the extension pgvault_no_such_ext that the backup needs"),
        ("locale", r"cannot create a database with the backup's locale 'xx_XX\.UTF-8'.*locale-gen"),
    ],
)
def test_a_new_server_lacking_an_extension_or_locale_is_refused_leaving_nothing(
    local_env, app_database, new_server, lacking, message
):
    manifest = back_up(app_database.url)
    context = sc.read_context(vault(), manifest)
    assert context is not None
    if lacking == "extension":
        changes: dict[str, Any] = {
            "extensions": (*context.extensions, ("pgvault_no_such_ext", "1.0"))
        }
    else:
        changes = {"database": replace(context.database, collate="xx_XX.UTF-8")}
    _forge_context(local_env, manifest, **changes)
    target = f"{new_server}/restored_app"
    with psycopg.connect(f"{new_server}/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE restored_app")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE TABLE still_here (id int); INSERT INTO still_here VALUES (42)")

    with pytest.raises(RestoreFailed, match=message) as refused:
        restore_backup(vault(), DAY, DatabaseUrl.parse(target, "STAGING_DATABASE_URL"))

    assert "\n" not in str(refused.value)
    assert _fetch(target, "SELECT id FROM still_here") == [(42,)]
    assert _roles_present(new_server, app_database.roles) == set()
    assert _fetch(f"{new_server}/postgres", "SELECT datname FROM pg_database ORDER BY 1") == [
        ("postgres",),
        ("restored_app",),
        ("template0",),
        ("template1",),
    ]


def test_a_restore_failing_after_creating_roles_drops_them_again(
    local_env, app_database, new_server
):
    manifest = back_up(app_database.url)
    lying = dict(manifest.table_rows, **{"app.users": manifest.table_rows["app.users"] + 1})
    (local_env / "store" / manifest_key("test", DAY)).write_bytes(
        replace(manifest, table_rows=lying).to_json()
    )

    with pytest.raises(RestoreFailed, match="row counts differ"):
        _restore_to(new_server)

    assert _roles_present(new_server, app_database.roles) == set()
    assert _fetch(f"{new_server}/postgres", "SELECT datname FROM pg_database ORDER BY 1") == [
        ("postgres",),
        ("template0",),
        ("template1",),
    ]


def test_existing_roles_are_left_alone_and_their_differences_reported(
    local_env, app_database, new_server, caplog
):
    back_up(app_database.url)
    with psycopg.connect(f"{new_server}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(app_database.owner)))

    with caplog.at_level(logging.WARNING):
        restored = _restore_to(new_server)

    assert f"role {app_database.owner} exists here as" in caplog.text
    assert _fetch(
        restored,
        "SELECT rolcanlogin, rolcreatedb FROM pg_roles WHERE rolname = %s",
        (app_database.owner,),
    ) == [(False, False)]


def test_an_older_major_is_refused_naming_both_and_a_newer_one_is_said():
    with pytest.raises(RestoreFailed, match=r"PostgreSQL 16 .* PostgreSQL 15, an older major"):
        sc.major_version_note(16, 15)
    assert "PostgreSQL 17, a newer major" in (sc.major_version_note(15, 17) or "")
    assert sc.major_version_note(15, 15) is None


def test_a_manifest_written_before_server_contexts_still_restores(
    local_env, app_database, make_database
):
    manifest = back_up(app_database.url)
    old = manifest.to_json().replace(b'"server_context"', b'"ignored_context"')
    old = old.replace(b'"server_major"', b'"ignored_major"')
    (local_env / "store" / manifest_key("test", DAY)).write_bytes(old)
    target = make_database("old")

    result = restore_backup(vault(), DAY, DatabaseUrl.parse(target, "STAGING_DATABASE_URL"))

    assert result.manifest.server_context is None and result.manifest.server_major is None
    assert database_snapshot(target) == database_snapshot(app_database.url)


def test_the_server_context_is_held_to_its_manifests_checksum(
    local_env, app_database, make_database
):
    manifest = back_up(app_database.url)
    assert manifest.server_context is not None
    path = local_env / "store" / manifest.server_context.object_key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    target = make_database("ctx")

    with pytest.raises(IntegrityError, match=r"server context of backup .* SHA-256"):
        restore_backup(vault(), DAY, DatabaseUrl.parse(target, "STAGING_DATABASE_URL"))
