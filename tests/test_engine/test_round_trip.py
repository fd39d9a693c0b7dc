"""A backup restores to a database equal to its source, row by row and schema by schema."""

from __future__ import annotations

import gzip
import json
import subprocess
import uuid
from urllib.parse import urlsplit, urlunsplit

import aws_encryption_sdk
import psycopg
from aws_encryption_sdk.identifiers import CommitmentPolicy
from aws_encryption_sdk.key_providers.kms import StrictAwsKmsMasterKeyProvider
from psycopg import sql

from pgvault_assets.engine.restore.restore import restore_backup
from pgvault_assets.engine.restore.verify import verify_backup
from pgvault_assets.settings import DatabaseUrl
from tests.dbcompare import database_snapshot
from tests.test_engine.helpers import DAY, back_up, vault


def test_local_backup_restores_equal_to_source(local_env, awkward_database, make_database):
    manifest = back_up(awkward_database)
    target = make_database("staging")

    result = restore_backup(vault(), DAY, DatabaseUrl(target), full_verify=True)

    assert database_snapshot(target) == database_snapshot(awkward_database)
    assert result.previous is not None and result.previous.startswith(
        result.target + "_pre_restore_"
    )
    assert manifest.table_rows["public.users"] > 0
    assert manifest.row_total == sum(manifest.table_rows.values())


def test_s3_kms_backup_restores_equal_to_source(aws_env, awkward_database, make_database):
    manifest = back_up(awkward_database)
    head = aws_env.s3.head_object(Bucket=aws_env.bucket, Key=manifest.object_key)
    target = make_database("staging")

    restore_backup(vault(), DAY, DatabaseUrl(target), full_verify=True)

    assert database_snapshot(target) == database_snapshot(awkward_database)
    assert manifest.key_id == aws_env.kms_key_arn  # the alias resolved, as strict decryption needs
    assert manifest.object_key == f"test/{DAY.isoformat()}/db_backup.sql.gz.enc"
    assert head["ServerSideEncryption"] == "aws:kms"
    assert manifest.object_version_id == head["VersionId"]
    assert head["ContentLength"] == manifest.size_bytes


def test_s3_backup_decrypts_with_the_plain_encryption_sdk_and_gunzip(aws_env, awkward_database):
    """The emergency procedure: no pgvault, only the AWS Encryption SDK and gunzip."""
    manifest = back_up(awkward_database)
    body = aws_env.s3.get_object(Bucket=aws_env.bucket, Key=manifest.object_key)["Body"].read()
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    provider = StrictAwsKmsMasterKeyProvider(key_ids=[manifest.key_id])
    compressed, header = client.decrypt(source=body, key_provider=provider)

    sql = subprocess.run(["gunzip", "-c"], input=compressed, capture_output=True, check=True).stdout
    assert header.encryption_context["purpose"] == "backup"
    assert header.encryption_context["date"] == DAY.isoformat()
    assert b"PostgreSQL database dump" in sql
    assert len(sql) == manifest.dump_size_bytes
    assert gzip.decompress(compressed) == sql


def test_manifest_records_what_operators_need(local_env, awkward_database):
    manifest = back_up(awkward_database)
    stored = json.loads(
        (local_env / "store" / "test" / DAY.isoformat() / "manifest.json").read_bytes()
    )

    assert stored["sha256"] == manifest.sha256
    assert stored["size_bytes"] == (local_env / "store" / manifest.object_key).stat().st_size
    assert stored["server_version"].startswith("PostgreSQL")
    assert stored["pg_dump_version"].startswith("pg_dump")
    assert {"compress", "encrypt", "write", "total"} <= set(stored["stage_seconds"])
    assert stored["compressed_size_bytes"] < stored["dump_size_bytes"]
    assert stored["encryption_context"] == {
        "purpose": "backup",
        "environment": "test",
        "date": DAY.isoformat(),
    }


def test_verify_backup_decrypts_fully_without_restoring(local_env, awkward_database):
    manifest = back_up(awkward_database)
    result = verify_backup(vault(), DAY, full=True)
    assert result.decrypted and result.dump_size_bytes == manifest.dump_size_bytes


def test_local_store_and_key_file_are_owner_only(local_env, awkward_database):
    manifest = back_up(awkward_database)
    key_file = local_env / "key" / "backup.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.stat().st_size == 32
    assert (local_env / "store").stat().st_mode & 0o777 == 0o700
    assert (local_env / "store" / manifest.object_key).stat().st_mode & 0o777 == 0o600
    assert (local_env / "store" / "test").stat().st_mode & 0o777 == 0o700


def test_a_comment_left_behind_by_a_dropped_subscription_does_not_stop_a_backup(
    local_env, make_database
):
    """PostgreSQL's regression database has one: DROP SUBSCRIPTION keeps the subscription's
    comment, on an object no longer there, which a dump leaves out and a backup must too."""
    source = make_database("src")
    name = f"pgvault_sub_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE SUBSCRIPTION {s} CONNECTION 'dbname=pgvault_no_such_db' "
                "PUBLICATION p WITH (connect = false, slot_name = NONE);"
                "COMMENT ON SUBSCRIPTION {s} IS 'left behind';"
                "DROP SUBSCRIPTION {s};"
                "CREATE TABLE kept (id int); INSERT INTO kept VALUES (1);"
                "COMMENT ON TABLE kept IS 'a comment beside it'"
            ).format(s=sql.Identifier(name))
        )
        orphans = conn.execute(
            "SELECT count(*) FROM pg_description WHERE description = 'left behind' "
            "AND classoid = 'pg_subscription'::regclass"
        ).fetchone()
    assert orphans == (1,)

    manifest = back_up(source)

    assert manifest.table_rows == {"public.kept": 1}


def test_a_url_that_reaches_its_server_by_hostaddr_backs_up_and_restores(local_env, make_database):
    """pg_dump and psql connect as psycopg does: every parameter of the URL that libpq reads
    from the environment reaches them. Here the host name resolves nowhere and `hostaddr` is
    the only way to the server; the tools used to drop it and fail on the name."""
    source, target = make_database("src"), make_database("staging")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE notes AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 500) g"
        )

    def by_hostaddr(url: str) -> str:
        parts = urlsplit(url)
        assert parts.hostname is not None
        unresolvable = parts._replace(netloc=parts.netloc.replace(parts.hostname, "db.invalid"))
        return urlunsplit(unresolvable._replace(query=f"hostaddr={parts.hostname}"))

    manifest = back_up(by_hostaddr(source))
    restore_backup(vault(), DAY, DatabaseUrl(by_hostaddr(target)), full_verify=True)

    assert manifest.table_rows == {"public.notes": 500}
    assert database_snapshot(target) == database_snapshot(source)
