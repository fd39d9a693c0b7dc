"""Each database of a fleet has its own store prefix, locks, audit trail and encryption context."""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime

import psycopg
import pytest

from pgvault_assets.engine.approvals.audit import append, audit_records
from pgvault_assets.engine.backup.backup import backup_database
from pgvault_assets.engine.basics import names
from pgvault_assets.engine.restore.restore import restore_backup
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import IntegrityError
from pgvault_assets.fleet import pin_database
from pgvault_assets.settings import DatabaseUrl, load_settings
from tests.test_fleet.helpers import alpha_and_beta

DAY = date(2026, 3, 14)
NOW = datetime(2026, 3, 15, 2, 30, tzinfo=UTC)


@pytest.fixture
def two_databases(local_env, make_database, monkeypatch):
    """Databases `alpha` and `beta` on one server, each backed up as the backup of DAY."""
    urls, _ = alpha_and_beta(local_env, monkeypatch, make_database)
    settings = load_settings()
    vaults = {}
    for name in urls:
        pinned = pin_database(settings, os.environ, name)
        vaults[name] = Vault.from_settings(pinned)
        backup_database(vaults[name], pinned.require_database(), DAY, now=lambda: NOW)
    return vaults


def _keys(vault: Vault) -> set[str]:
    return {obj.key for obj in vault.store.list("")}


def test_two_databases_backed_up_on_one_day_share_no_key_lock_or_context(two_databases):
    alpha, beta = two_databases["alpha"], two_databases["beta"]
    manifests = {name: vault.read_manifest(DAY) for name, vault in two_databases.items()}

    stored = {key for key in _keys(alpha) if not key.startswith(".locks/")}
    alpha_keys = {key for key in stored if key.startswith(f"test/alpha/{DAY.isoformat()}/")}
    beta_keys = {key for key in stored if key.startswith(f"test/beta/{DAY.isoformat()}/")}
    assert alpha_keys and beta_keys and alpha_keys | beta_keys == stored
    assert manifests["alpha"].object_key == f"test/alpha/{DAY.isoformat()}/db_backup.sql.gz.enc"

    assert manifests["alpha"].encryption_context == {
        "purpose": "backup",
        "environment": "test",
        "database": "alpha",
        "date": DAY.isoformat(),
    }
    assert manifests["beta"].encryption_context["database"] == "beta"

    def locks(namespace: str) -> set[str]:
        return {names.backup_lock_name(namespace, DAY), names.retention_lock_name(namespace)}

    alpha_locks, beta_locks = locks(alpha.environment), locks(beta.environment)
    single = locks("test")
    assert not alpha_locks & beta_locks and not (alpha_locks | beta_locks) & single
    assert alpha.backup_dates() == beta.backup_dates() == [DAY]


def test_audit_records_of_one_database_are_not_the_others(two_databases):
    alpha, beta = two_databases["alpha"], two_databases["beta"]
    record = append(alpha, "requests", "created", {"what": "restore"}, now=NOW)

    assert record.key.startswith("test/alpha/audit/requests/")
    assert [r.key for r in audit_records(alpha)] == [record.key]
    assert audit_records(beta) == []


def test_restoring_one_database_never_reads_another_manifest(two_databases, make_database):
    alpha, beta = two_databases["alpha"], two_databases["beta"]
    root = alpha.store.root  # the local store both share
    (root / beta.manifest_key(DAY)).write_text("{damaged")
    target = make_database("restored")

    restore_backup(alpha, DAY, DatabaseUrl(target), full_verify=True)

    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT name FROM owner").fetchall() == [("alpha",)]


def test_one_database_manifest_cannot_pose_as_another(two_databases):
    alpha, beta = two_databases["alpha"], two_databases["beta"]
    root = alpha.store.root
    stolen = json.loads((root / alpha.manifest_key(DAY)).read_text())
    (root / beta.manifest_key(DAY)).write_text(json.dumps(stolen))

    with pytest.raises(IntegrityError):
        beta.read_manifest(DAY)
