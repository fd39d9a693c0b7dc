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

from pgvault_assets.engine.backup.backup import backup_database
from pgvault_assets.engine.basics.names import manifest_key
from pgvault_assets.engine.postgres import server_context as sc
from pgvault_assets.engine.postgres import shape
from pgvault_assets.engine.postgres.compare import compare_databases
from pgvault_assets.engine.postgres.integrity import check_database_integrity
from pgvault_assets.engine.restore.restore import restore_backup, restore_into_scratch
from pgvault_assets.engine.vault.manifest import (
    PASSWORDS_EXCLUDED,
    PASSWORDS_INCLUDED,
    Manifest,
    server_context_encryption_context,
)
from pgvault_assets.engine.vault.pipeline import decrypt_stream
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
from tests.test_faults.conftest import spawn_pgvault  # noqa: F401 (a fixture)

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
                    ALTER TABLE app.users FORCE ROW LEVEL SECURITY;
                    CREATE POLICY owner_rows ON app.users TO {owner} USING (true);
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
                    ALTER DEFAULT PRIVILEGES IN SCHEMA app GRANT SELECT ON TABLES TO {reader};

                    CREATE TYPE app.status AS ENUM ('new', 'active', 'closed');
                    CREATE DOMAIN app.email_address AS citext CHECK (VALUE LIKE '%@%');
                    CREATE TYPE app.price_band AS RANGE (subtype = numeric);
                    COMMENT ON TYPE app.status IS 'where an order stands';
                    CREATE TABLE app.orders (
                        id bigint GENERATED BY DEFAULT AS IDENTITY,
                        placed_on date NOT NULL,
                        status app.status NOT NULL DEFAULT 'new',
                        contact app.email_address,
                        net numeric(12, 2) NOT NULL,
                        gross numeric(12, 2) GENERATED ALWAYS AS (net * 1.2) STORED,
                        band app.price_band,
                        PRIMARY KEY (id, placed_on)
                    ) PARTITION BY RANGE (placed_on);
                    CREATE TABLE app.orders_2026 PARTITION OF app.orders
                        FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
                    CREATE TABLE app.orders_2027 PARTITION OF app.orders
                        FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
                    INSERT INTO app.orders (placed_on, status, contact, net, band)
                    SELECT date '2026-06-01' + i * 3,
                           (ARRAY['new', 'active', 'closed'])[1 + i % 3]::app.status,
                           'Buyer' || i || '@Example.com', i * 10.5,
                           app.price_band(i * 10, i * 10 + 10)
                    FROM generate_series(1, 150) i;
                    ALTER TABLE app.orders ENABLE ROW LEVEL SECURITY;
                    CREATE POLICY open_orders ON app.orders AS RESTRICTIVE FOR ALL TO {reader}
                        USING (status <> 'closed') WITH CHECK (net >= 0);
                    CREATE MATERIALIZED VIEW app.orders_per_status AS
                        SELECT status, count(*) AS orders, sum(gross) AS gross
                        FROM app.orders GROUP BY status;
                    COMMENT ON MATERIALIZED VIEW app.orders_per_status IS 'for the dashboard';
                    CREATE VIEW app.active_orders AS
                        SELECT id, placed_on, net FROM app.orders WHERE status = 'active';

                    CREATE TABLE app.events (
                        id serial PRIMARY KEY,
                        at timestamptz NOT NULL DEFAULT '2026-01-01 00:00+00',
                        kind text NOT NULL
                    );
                    CREATE TABLE app.login_events (ip inet NOT NULL) INHERITS (app.events);
                    INSERT INTO app.events (kind) VALUES ('boot'), ('deploy');
                    INSERT INTO app.login_events (kind, ip) VALUES ('login', '10.0.0.1');

                    CREATE FUNCTION app.note_user() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN
                        INSERT INTO app.audit (note) VALUES ('user ' || NEW.id);
                        RETURN NEW;
                    END $$;
                    CREATE TRIGGER users_noted AFTER INSERT ON app.users
                        FOR EACH ROW EXECUTE FUNCTION app.note_user();
                    INSERT INTO app.users (email, tenant, token)
                    VALUES ('late@example.com', 't1', digest('late', 'sha256'));
                    CREATE RULE audit_is_append_only AS ON DELETE TO app.audit DO INSTEAD NOTHING;
                    """
                ).format(reader=reader, owner=owner)
            )
            conn.execute("SELECT lo_from_bytea(424242, 'a large object''s bytes')")
            conn.execute(sql.SQL("GRANT SELECT ON LARGE OBJECT 424242 TO {}").format(reader))
            conn.execute("COMMENT ON LARGE OBJECT 424242 IS 'an attachment'")
        yield app
    finally:
        _drop_databases([app.name])
        _drop_roles(PG_SERVER_URL, app.roles)


@pytest.fixture
def new_server(own_cluster: PrivateCluster, app_database: AppDatabase) -> str:
    """A private cluster of this test's own as a new server: it has none of the app's roles,
    and every database on it is one the test made, whatever ran before."""
    assert _roles_present(own_cluster.server_url, app_database.roles) == set()
    return own_cluster.server_url


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
    _assert_whole(app_database, restored, manifest)


def _assert_whole(
    app: AppDatabase, restored: str, manifest: Manifest, restorer: str | None = None
) -> None:
    """pgvault's own comparisons agree: every table, and the database around them. Restored
    by a non-superuser, the extensions belong to that role (only a superuser may create them
    for another), which both comparisons name under roles, and only that."""
    source, copy = (DatabaseUrl.parse(url, "DATABASE_URL") for url in (app.url, restored))
    comparison = compare_databases(source, copy)
    assert comparison.equal, (comparison.differing, comparison.sections)
    extra = (
        ()
        if restorer is None
        else (
            f"{restorer}: NOSUPERUSER INHERIT CREATEROLE CREATEDB LOGIN NOREPLICATION NOBYPASSRLS",
        )
    )
    expected = [shape.SectionDifference(shape.ROLES, (), extra)] if extra else []
    assert list(comparison.sections) == expected  # said, as a note
    context = sc.read_context(vault(), manifest)
    checks = {c.name: c for c in check_database_integrity(copy, manifest, context=context)}
    wanted = set(shape.SECTIONS) | {"row counts", "sequences", "foreign keys"}
    assert all(checks[name].passed and not checks[name].skipped for name in wanted), [
        (c.name, c.detail) for c in checks.values() if not c.passed or c.skipped
    ]
    if restorer is not None:
        assert f"{restorer}: " in checks[shape.ROLES].detail


def test_restored_beside_its_source_the_whole_database_comes_back(local_env, app_database):
    manifest = back_up(app_database.url)
    restored = f"{app_database.url}_copy"
    try:
        restore_backup(vault(), DAY, DatabaseUrl.parse(restored, "STAGING_DATABASE_URL"))
        assert _schema_dump(restored) == _schema_dump(app_database.url)
        assert database_snapshot(restored) == database_snapshot(app_database.url)
        _assert_whole(app_database, restored, manifest)
    finally:
        _drop_databases([f"{app_database.name}_copy"])


def test_a_restorer_with_only_createrole_and_createdb_rebuilds_the_database_on_a_new_server(
    local_env, app_database, new_server
):
    """Managed servers give no superuser: a CREATEROLE, CREATEDB role is what operators have."""
    manifest = back_up(app_database.url)
    port = new_server.rsplit(":", 1)[1]
    with psycopg.connect(f"{new_server}/postgres", autocommit=True) as conn:
        conn.execute("CREATE ROLE pgvault_restorer LOGIN CREATEDB CREATEROLE PASSWORD 'r-7c1e'")
    try:
        restorer = f"postgresql://pgvault_restorer:r-7c1e@127.0.0.1:{port}"
        restore_backup(
            vault(), DAY, DatabaseUrl.parse(f"{restorer}/restored_app", "STAGING_DATABASE_URL")
        )
        restored = f"{new_server}/restored_app"
        assert _schema_dump(restored) == _schema_dump(app_database.url)
        assert database_snapshot(restored) == database_snapshot(app_database.url)
        _assert_whole(app_database, restored, manifest, restorer="pgvault_restorer")
        # The memberships it needed to hand over ownership were given back.
        assert (
            _fetch(
                f"{new_server}/postgres",
                "SELECT pg_get_userbyid(roleid) FROM pg_auth_members "
                "WHERE member = 'pgvault_restorer'::regrole",
            )
            == []
        )
    finally:
        with psycopg.connect(f"{new_server}/postgres", autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS restored_app WITH (FORCE)")
            conn.execute("DROP ROLE IF EXISTS pgvault_restorer")


def test_a_restorer_that_may_not_act_as_an_existing_owner_is_refused_before_anything(
    local_env, app_database, new_server
):
    back_up(app_database.url)
    port = new_server.rsplit(":", 1)[1]
    with psycopg.connect(f"{new_server}/postgres", autocommit=True) as conn:
        conn.execute("CREATE ROLE pgvault_restorer LOGIN CREATEDB CREATEROLE PASSWORD 'r-7c1e'")
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(app_database.owner)))
    try:
        restorer = f"postgresql://pgvault_restorer:r-7c1e@127.0.0.1:{port}"
        with pytest.raises(RestoreFailed) as refused:
            restore_backup(
                vault(), DAY, DatabaseUrl.parse(f"{restorer}/restored_app", "STAGING_DATABASE_URL")
            )
        assert str(refused.value) == (
            f"the restoring role pgvault_restorer is not a member of {app_database.owner}, "
            "which owns objects in the backup and exist here already; "
            f"GRANT {app_database.owner} TO pgvault_restorer, or restore as a superuser"
        )
        assert _roles_present(new_server, app_database.roles) == {app_database.owner}
        assert _fetch(f"{new_server}/postgres", "SELECT count(*) FROM pg_database") == [(3,)]
    finally:
        with psycopg.connect(f"{new_server}/postgres", autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS pgvault_restorer")


def test_roles_of_a_restore_killed_after_creating_them_are_dropped_by_the_next(
    local_env,
    app_database,
    new_server,
    spawn_pgvault,  # noqa: F811 (the fixture imported above)
    caplog,
):
    back_up(app_database.url)
    target = f"{new_server}/restored_app"
    killed = spawn_pgvault(
        "import sys\n"
        "from pgvault_assets.engine.restore.restore import restore_backup\n"
        "from pgvault_assets.settings import DatabaseUrl\n"
        "from tests.test_engine.helpers import DAY, vault\n"
        "restore_backup(vault(), DAY, DatabaseUrl.parse(sys.argv[1], 'STAGING_DATABASE_URL'))\n",
        target,
        pause_at="roles",
    )
    killed.wait_for_pause("roles")
    killed.kill()
    assert _roles_present(new_server, app_database.roles) == set(app_database.roles)

    with caplog.at_level(logging.WARNING):
        _restore_to(new_server)

    for role in app_database.roles:
        assert (
            f"dropped role {role}, created by an interrupted restore into restored_app_restore_"
            in caplog.text
        )
    # Created again by this restore, which succeeded: theirs now, no longer marked as leftovers.
    assert _fetch(
        f"{new_server}/postgres",
        "SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles "
        "WHERE rolname = ANY(%s) ORDER BY 1",
        (list(app_database.roles),),
    ) == [(role, None) for role in sorted(app_database.roles)]


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


def test_integrity_and_compare_name_each_way_the_database_around_the_rows_differs(
    local_env, app_database
):
    manifest = back_up(app_database.url)
    copy_name = f"{app_database.name}_copy"
    copy = f"{app_database.url}_copy"
    owner, reader = (sql.Identifier(n) for n in (app_database.owner, app_database.reader))
    try:
        restore_backup(vault(), DAY, DatabaseUrl.parse(copy, "STAGING_DATABASE_URL"))
        with psycopg.connect(copy, autocommit=True) as conn:
            for statement in (
                sql.SQL("ALTER TABLE app.audit OWNER TO {}").format(reader),
                sql.SQL("REVOKE SELECT ON app.users FROM {}").format(reader),
                sql.SQL("DROP POLICY tenant_rows ON app.users"),
                sql.SQL("COMMENT ON TABLE app.users IS 'changed'"),
                sql.SQL("SELECT lo_put(424242, 0, 'A')"),
                sql.SQL("ALTER DATABASE {} SET statement_timeout = '9s'").format(
                    sql.Identifier(copy_name)
                ),
                sql.SQL("DROP EXTENSION pgcrypto CASCADE"),
                sql.SQL("ALTER ROLE {} CONNECTION LIMIT 7").format(owner),
            ):
                conn.execute(statement)
        context = sc.read_context(vault(), manifest)
        checks = {
            c.name: c
            for c in check_database_integrity(
                DatabaseUrl.parse(copy, "STAGING_DATABASE_URL"), manifest, context=context
            )
        }
        failed = {name for name, check in checks.items() if not check.passed}
        assert failed == {
            shape.OWNERS,
            shape.GRANTS,
            shape.POLICIES,
            shape.COMMENTS,
            shape.SETTINGS,
            shape.EXTENSIONS,
        }
        assert checks["indexes (amcheck)"].passed
        # An existing role is never altered by a restore: its other attributes are said.
        assert checks[shape.ROLES].detail.startswith("as in the backup but for: ")
        assert "CONNECTION LIMIT 7 (here only)" in checks[shape.ROLES].detail
        assert f"table app.audit owned by {app_database.owner} (" in checks[shape.OWNERS].detail
        assert "policy tenant_rows on app.users" in checks[shape.POLICIES].detail
        assert "database: statement_timeout (value " in checks[shape.SETTINGS].detail
        assert "9s" not in checks[shape.SETTINGS].detail  # a value may be a secret
        assert checks[shape.EXTENSIONS].detail.startswith("pgcrypto 1.3 (")
        # A large object's bytes are compared between live databases, where reading them
        # costs no backup a second pass.
        comparison = compare_databases(
            DatabaseUrl.parse(app_database.url, "DATABASE_URL"),
            DatabaseUrl.parse(copy, "STAGING_DATABASE_URL"),
        )
        differing = {d.section for d in comparison.sections}
        assert shape.LARGE_OBJECTS in differing and shape.GRANTS in differing
        assert "table app.users: changed (" in checks[shape.COMMENTS].detail  # qualified
        assert not comparison.equal
    finally:
        with psycopg.connect(f"{PG_SERVER_URL}/postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} CONNECTION LIMIT -1").format(owner))
        _drop_databases([copy_name])


def test_a_restored_copy_unlike_the_backups_record_is_never_swapped_in(
    local_env, app_database, new_server
):
    manifest = back_up(app_database.url)
    context = sc.read_context(vault(), manifest)
    assert context is not None
    objects = dict(context.objects)
    objects[shape.GRANTS] = (*objects[shape.GRANTS], "table app.users: DELETE to PUBLIC")
    _forge_context(local_env, manifest, objects=objects)

    with pytest.raises(RestoreFailed) as refused:
        _restore_to(new_server)

    assert str(refused.value) == (
        "the restored database differs from the backup in its grants: "
        "table app.users: DELETE to PUBLIC (backup only)"
    )
    assert _roles_present(new_server, app_database.roles) == set()
    assert _fetch(f"{new_server}/postgres", "SELECT count(*) FROM pg_database") == [(3,)]


def test_only_a_role_missing_altogether_fails_the_roles_check():
    changed = shape.SectionDifference(
        shape.ROLES, ("app: NOSUPERUSER INHERIT",), ("app: NOSUPERUSER NOINHERIT",)
    )
    missing = shape.SectionDifference(shape.ROLES, ("app: NOSUPERUSER INHERIT",), ())
    membership = shape.SectionDifference(shape.ROLES, ("ro member of readers",), ())
    newer = shape.SectionDifference(shape.EXTENSIONS, ("citext 1.6",), ("citext 1.7",))
    assert not shape.matters(changed) and not shape.matters(membership)
    assert shape.matters(missing)
    assert not shape.matters(newer)
    assert shape.matters(shape.SectionDifference(shape.EXTENSIONS, ("citext 1.6",), ()))


def test_a_database_without_a_public_schema_and_with_global_default_privileges_comes_back(
    local_env, new_server
):
    """Shapes a review found refused or unreadable: no `public` schema (a dump never drops
    the one a new database has), default privileges for no schema in particular, and a
    comment on a constraint a child table inherits (a dump leaves it out)."""
    name = f"{TEST_DB_PREFIX}plain_{uuid.uuid4().hex[:8]}"
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    source = f"{PG_SERVER_URL}/{name}"
    try:
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(
                """
                DROP SCHEMA public;
                CREATE SCHEMA shop;
                ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC;
                CREATE TABLE shop.parent (x int CHECK (x > 0));
                CREATE TABLE shop.child (y int) INHERITS (shop.parent);
                COMMENT ON CONSTRAINT parent_x_check ON shop.child IS 'inherited';
                INSERT INTO shop.child VALUES (1, 2);
                """
            )
        manifest = back_up(source)
        restored = _restore_to(new_server)
        comparison = compare_databases(
            DatabaseUrl.parse(source, "DATABASE_URL"), DatabaseUrl.parse(restored, "DATABASE_URL")
        )
        assert comparison.equal, (comparison.differing, comparison.sections)
        assert _fetch(restored, "SELECT count(*) FROM pg_namespace WHERE nspname = 'public'") == [
            (0,)
        ]
        # A table's own rows, as its COPY block holds them; a backup taken before counted a
        # parent with its inheritance children, and still restores against those counts.
        assert manifest.table_rows == {"shop.parent": 0, "shop.child": 1}
        older = replace(
            manifest, rows_exclude_children=False, table_rows={"shop.parent": 1, "shop.child": 1}
        )
        (local_env / "store" / manifest_key("test", DAY)).write_bytes(older.to_json())
        _restore_to(new_server, "restored_older")
    finally:
        _drop_databases([name])


def test_a_throwaway_restore_takes_the_roles_it_created_with_it(
    local_env, app_database, new_server
):
    """Row recovery and drills restore into a scratch database that is dropped afterwards:
    the roles made for it go too, or a login deleted since the backup would come back."""
    back_up(app_database.url)
    server = DatabaseUrl.parse(f"{new_server}/postgres", "STAGING_DATABASE_URL")
    with restore_into_scratch(vault(), DAY, server, label="rows") as scratch:
        assert _roles_present(new_server, app_database.roles) == set(app_database.roles)
        assert _fetch(scratch.url.secret, "SELECT count(*) FROM app.users") == [(51,)]
    assert _roles_present(new_server, app_database.roles) == set()
