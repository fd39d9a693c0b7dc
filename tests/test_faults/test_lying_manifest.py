"""A manifest that lies about which object it describes is caught before any byte is restored.

The existing suite covers a lying checksum over a flipped object, lying row counts and a copy
under another date; these add the lies left: another backup's checksum and size, a pinned
version that is not the backed-up one, and a manifest of another environment or date.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import psycopg
import pytest

from pgvault_assets.engine.basics.names import manifest_key
from pgvault_assets.engine.restore.restore import restore_backup
from pgvault_assets.engine.restore.verify import verify_backup
from pgvault_assets.errors import IntegrityError
from pgvault_assets.settings import DatabaseUrl
from tests.conftest import AwsEnv
from tests.test_engine.helpers import DAY, back_up, vault
from tests.test_faults.conftest import fill


@pytest.fixture
def two_sources(make_database) -> tuple[str, str]:
    first, second = make_database("a"), make_database("b")
    fill(first, 100)
    fill(second, 200)
    return first, second


def _untouched_target(make_database) -> str:
    url = make_database("staging")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE still_here (id int)")
    return url


def test_manifest_claiming_another_backups_checksum_and_size_is_refused(
    local_env, two_sources, make_database
) -> None:
    older = back_up(two_sources[0], day=DAY - timedelta(days=1))
    newer = back_up(two_sources[1], accept_new_source=True)
    lying = replace(newer, sha256=older.sha256, size_bytes=older.size_bytes)
    (local_env / "store" / manifest_key("test", DAY)).write_bytes(lying.to_json())
    target = _untouched_target(make_database)

    with pytest.raises(IntegrityError, match="do not restore it"):
        restore_backup(vault(), DAY, DatabaseUrl(target))
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT to_regclass('public.still_here')").fetchone() != (None,)
        assert conn.execute("SELECT to_regclass('public.t')").fetchone() == (None,)


def test_manifest_pinning_another_version_of_its_object_is_refused(
    aws_env: AwsEnv, two_sources
) -> None:
    first = back_up(two_sources[0])
    second = back_up(two_sources[1], accept_new_source=True)
    assert first.object_version_id and first.object_version_id != second.object_version_id
    lying = replace(second, object_version_id=first.object_version_id)
    aws_env.s3.put_object(
        Bucket=aws_env.bucket, Key=manifest_key("test", DAY), Body=lying.to_json()
    )

    with pytest.raises(IntegrityError, match=r"SHA-256|manifest says"):
        verify_backup(vault(), DAY, full=True)


@pytest.mark.parametrize("lie", ["environment", "date"])
def test_manifest_of_another_environment_or_date_under_this_key_is_refused(
    local_env, two_sources, lie: str
) -> None:
    manifest = back_up(two_sources[0])
    other = (
        replace(manifest, environment="staging")
        if lie == "environment"
        else replace(manifest, date=DAY - timedelta(days=2))
    )
    other = replace(
        other,
        encryption_context={
            "purpose": "backup",
            "environment": other.environment,
            "date": other.date.isoformat(),
        },
    )
    (local_env / "store" / manifest_key("test", DAY)).write_bytes(other.to_json())

    with pytest.raises(IntegrityError, match="describes the backup of"):
        verify_backup(vault(), DAY)
