"""No silent replacement: a backup of another database is refused, a re-run of a date says
whose backup it replaces and keeps that one listable and restorable until retention, and a
restore proof is shown only for the object it restored."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import psycopg
import pytest
from dagster import materialize
from psycopg import sql
from test_defs.backup_history import write_history

from pgvault_assets.cli import main
from pgvault_assets.defs.naming import BACKUP_KEY
from pgvault_assets.defs.resources import resource_defs
from pgvault_assets.engine.backup.retention import apply_retention, plan_retention
from pgvault_assets.engine.basics import names
from pgvault_assets.engine.basics.clock import latest_complete_day, utcnow
from pgvault_assets.engine.monitoring.catalog import backup_rows
from pgvault_assets.engine.recovery.restore_check import RestoreProof, record_restore_verified
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.settings import RetentionPolicy, load_settings
from tests.conftest import admin_connect
from tests.test_defs.single import database_backup, restorable
from tests.test_engine.helpers import back_up


@pytest.fixture(params=["local", "s3"])
def store_env(request) -> str:
    """The embedded local store, or a versioned bucket on moto: the promises hold for both."""
    request.getfixturevalue("local_env" if request.param == "local" else "aws_env")
    return request.param


def _vault() -> Vault:
    return Vault.from_settings(load_settings())


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM items").fetchone()[0]


def _database_with_rows(make_database, hint: str, rows: int) -> str:
    url = make_database(hint)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int)")
        conn.execute("INSERT INTO items SELECT generate_series(1, %s)", [rows])
    return url


def _stored_everything(vault: Vault) -> list[tuple[str, int]]:
    """Every object and kept version under the namespace (what a refused backup must not touch)."""
    objects = [(o.key, o.size_bytes) for o in vault.store.list(f"{vault.environment}/")]
    kept = [(v.stored_as, 0) for v in vault.store.kept_versions(f"{vault.environment}/")]
    return sorted(objects + kept)


def test_a_backup_of_another_database_into_the_environment_is_refused_before_any_dump(
    capsys, store_env, make_database, monkeypatch
):
    demo = _database_with_rows(make_database, "demo", 3)
    other = _database_with_rows(make_database, "other", 5)
    monkeypatch.setenv("DATABASE_URL", demo)
    code, _, err = _cli(capsys, "backup")
    assert code == 0, err
    day = latest_complete_day(utcnow())
    before = _stored_everything(_vault())
    recorded = _vault().read_manifest(day)
    assert recorded.source is not None and recorded.source.database == demo.rsplit("/", 1)[1]

    monkeypatch.setenv("DATABASE_URL", other)
    code, _, err = _cli(capsys, "backup")

    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert demo.rsplit("/", 1)[1] in lines[0] and other.rsplit("/", 1)[1] in lines[0]
    assert "--accept-new-source" in lines[0]
    assert _stored_everything(_vault()) == before
    assert _vault().read_manifest(day).sha256 == recorded.sha256


def test_a_new_source_is_backed_up_only_when_accepted_and_the_manifest_says_so(
    capsys, local_env, make_database, monkeypatch
):
    monkeypatch.setenv("DATABASE_URL", _database_with_rows(make_database, "old", 3))
    assert _cli(capsys, "backup")[0] == 0
    replacement = _database_with_rows(make_database, "new", 4)
    monkeypatch.setenv("DATABASE_URL", replacement)

    code, out, err = _cli(capsys, "backup", "--accept-new-source")

    assert code == 0, err
    manifest = _vault().read_manifest(latest_complete_day(utcnow()))
    assert manifest.new_source is True
    assert manifest.source is not None
    assert manifest.source.database == replacement.rsplit("/", 1)[1]
    assert "is now the source of these backups" in out
    assert _cli(capsys, "backup")[0] == 0  # the next backup of it needs no flag
    assert _vault().read_manifest(manifest.date).new_source is False


def test_a_backup_after_one_of_unknown_source_is_not_refused(
    capsys, local_env, make_database, monkeypatch
):
    first = back_up(_database_with_rows(make_database, "old", 3))
    vault = _vault()
    key = vault.manifest_key(first.date)
    written_before_sources = json.loads(vault.store.get_bytes(key))
    del written_before_sources["source"]
    vault.store.put_bytes(key, json.dumps(written_before_sources).encode())
    assert vault.read_manifest(first.date).source is None

    manifest = back_up(_database_with_rows(make_database, "other", 4))

    assert manifest.source is not None and manifest.replaced[0].source is None


def test_a_rerun_says_it_replaces_the_earlier_backup_which_stays_listable_and_restorable(
    capsys, store_env, make_database, monkeypatch
):
    source = _database_with_rows(make_database, "src", 3)
    staging = make_database("staging")
    monkeypatch.setenv("DATABASE_URL", source)
    monkeypatch.setenv("STAGING_DATABASE_URL", staging)
    assert _cli(capsys, "backup")[0] == 0
    day = latest_complete_day(utcnow())
    first = _vault().read_manifest(day)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("INSERT INTO items VALUES (4), (5)")

    code, out, err = _cli(capsys, "backup")

    assert code == 0, err
    said = [line for line in out.splitlines() if "replaces" in line]
    assert len(said) == 1, out
    assert f"{first.finished_at:%Y-%m-%d %H:%M:%S}" in said[0] and first.sha256[:12] in said[0]
    code, out, err = _cli(capsys, "list-backups", "--json")
    assert [row["sha256"] for row in json.loads(out)] == [_vault().read_manifest(day).sha256]
    code, out, err = _cli(capsys, "list-backups", "--versions", "--json")
    rows = json.loads(out)
    assert [(row["date"], row["current"]) for row in rows] == [
        (day.isoformat(), True),
        (day.isoformat(), False),
    ]
    assert rows[1]["sha256"] == first.sha256 and rows[1]["version_id"] == first.object_version_id
    code, out, err = _cli(capsys, "list-backups", "--versions")
    assert "(replaced)" in out

    code, out, err = _cli(
        capsys,
        "restore-from-backup",
        "--date",
        day.isoformat(),
        "--target",
        "staging",
        "--version",
        rows[1]["version_id"],
    )
    assert code == 0, err
    assert _rows(staging) == 3
    code, _, err = _cli(
        capsys, "restore-from-backup", "--date", day.isoformat(), "--target", "staging"
    )
    assert code == 0, err
    assert _rows(staging) == 5


def test_restoring_a_version_the_date_never_had_is_refused_in_one_line(
    capsys, local_env, make_database, monkeypatch
):
    manifest = back_up(_database_with_rows(make_database, "src", 3))
    monkeypatch.setenv("STAGING_DATABASE_URL", make_database("staging"))

    code, _, err = _cli(
        capsys,
        "restore-from-backup",
        "--date",
        manifest.date.isoformat(),
        "--target",
        "staging",
        "--version",
        "0" * 32,
    )

    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "list-backups --versions" in lines[0], err


def _stored_versions(store_kind: str, vault: Vault, key: str, aws_env) -> int:
    if store_kind == "local":
        return sum(1 for v in vault.store.kept_versions(key) if v.key == key)
    listing = aws_env.s3.list_object_versions(Bucket=aws_env.bucket, Prefix=key)
    return sum(1 for v in listing.get("Versions", []) if v["Key"] == key)


def test_retention_deletes_the_replaced_versions_with_their_date(request, store_env, make_database):
    aws = request.getfixturevalue("aws_env") if store_env == "s3" else None
    source = _database_with_rows(make_database, "src", 3)
    old = date(2025, 3, 12)  # a Wednesday: a daily backup, long expired on TODAY
    back_up(source, day=old, now=datetime(2025, 3, 13, 2, 0, tzinfo=UTC))
    back_up(source, day=old, now=datetime(2025, 3, 13, 3, 0, tzinfo=UTC))
    vault = _vault()
    object_key = names.object_key(vault.environment, old)
    assert len(vault.read_manifest(old).versions) == 2
    assert _stored_versions(store_env, vault, object_key, aws) == 2
    write_history(vault, date(2025, 3, 1), date(2025, 3, 11))
    write_history(vault, date(2025, 12, 1), date(2025, 12, 30))
    today = date(2025, 12, 31)
    plan = plan_retention(
        vault.list_manifests(),
        today,
        RetentionPolicy(),
        now=datetime(2025, 12, 31, 3, 0, tzinfo=UTC),
    )
    (doomed,) = [d for d in plan.delete if d.day == old]
    assert doomed.size_bytes == sum(v.size_bytes for v in vault.read_manifest(old).versions)

    apply_retention(vault, plan)

    assert _stored_versions(store_env, vault, object_key, aws) == 0
    assert vault.store.list(f"{names.day_folder(vault.environment, old)}/") == []


def test_a_proof_of_one_object_is_not_shown_for_the_backup_that_replaced_it(
    capsys, local_env, make_database
):
    source = _database_with_rows(make_database, "src", 3)
    proven = back_up(source)
    vault = _vault()
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    record_restore_verified(
        vault, RestoreProof(proven.date, at, "scratch", 1, 3, 1.0, proven.sha256)
    )
    settings = load_settings()
    assert (
        backup_rows(settings, days=None, now=utcnow())[0]["restore_verified_at"] == at.isoformat()
    )

    replacement = back_up(source)

    assert replacement.sha256 != proven.sha256
    rows = backup_rows(settings, days=None, now=utcnow(), versions=True)
    assert [(row["sha256"], row["restore_verified_at"]) for row in rows] == [
        (replacement.sha256, None),
        (proven.sha256, at.isoformat()),
    ]
    code, out, _ = _cli(capsys, "list-backups")
    assert code == 0 and at.isoformat() not in out


def test_a_proof_recorded_without_its_object_hash_is_not_shown(local_env, make_database):
    manifest = back_up(_database_with_rows(make_database, "src", 3))
    vault = _vault()
    older_proof = {"date": manifest.date.isoformat(), "verified_at": "2030-01-02T03:04:05+00:00"}
    key = names.restore_verified_key(vault.environment, manifest.date)
    vault.store.put_bytes(key, json.dumps(older_proof).encode())

    rows = backup_rows(load_settings(), days=None, now=utcnow())

    assert rows[0]["restore_verified_at"] is None


def test_a_replaced_local_version_stays_until_retention(local_env, make_database):
    source = _database_with_rows(make_database, "src", 3)
    first = back_up(source)
    back_up(source)
    back_up(source)
    vault = _vault()
    kept = {v.version_id for v in vault.store.kept_versions(first.object_key)}

    assert first.object_version_id in kept
    assert len(kept) == 3


def test_a_rematerialized_day_is_unproven_until_its_own_object_is_proven(
    local_env, make_database, postgres_server, instance, monkeypatch
):
    monkeypatch.setenv("DATABASE_URL", _database_with_rows(make_database, "src", 3))
    monkeypatch.setenv("RESTORE_CHECK_DATABASE_URL", f"{postgres_server}/postgres")
    day = latest_complete_day(utcnow()).isoformat()
    proving = materialize(
        [database_backup, restorable],
        instance=instance,
        resources=resource_defs(),
        partition_key=day,
    )
    assert proving.success
    (proof,) = [e for e in proving.get_asset_check_evaluations() if e.check_name == "restorable"]
    proven = _vault().read_manifest(latest_complete_day(utcnow()))
    assert proof.passed and proof.metadata["sha256"].value == proven.sha256
    settings = load_settings()
    assert backup_rows(settings, days=None, now=utcnow())[0]["restore_verified_at"] is not None

    again = materialize(
        [database_backup], instance=instance, resources=resource_defs(), partition_key=day
    )

    assert again.success
    event = instance.get_latest_materialization_event(BACKUP_KEY)
    assert event is not None
    metadata = event.asset_materialization.metadata
    assert metadata["replaced_sha256"].value == proven.sha256
    assert metadata["replaced_backup_taken_at"].value == proven.finished_at.isoformat()
    rows = backup_rows(settings, days=None, now=utcnow(), versions=True)
    assert [(row["current"], row["restore_verified_at"] is not None) for row in rows] == [
        (True, False),
        (False, True),
    ]


def test_the_same_database_recreated_is_backed_up_as_the_same_source_with_a_warning(
    local_env, make_database, caplog
):
    url = _database_with_rows(make_database, "src", 3)
    first = back_up(url)
    name = url.rsplit("/", 1)[1]
    with admin_connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    second = back_up(url)

    assert first.source is not None and second.source is not None
    assert second.source.database_oid != first.source.database_oid
    assert second.new_source is False
    assert any("was recreated" in record.getMessage() for record in caplog.records)
