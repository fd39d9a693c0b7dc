"""A restore reads the object once: it verifies while it restores beside the target, swaps
only once all of it proved intact, and stops reading as soon as psql stops."""

from __future__ import annotations

from typing import Any, BinaryIO

import psycopg
import pytest

from pgvault_assets.engine.basics.names import object_key
from pgvault_assets.engine.restore.restore import restore_backup
from pgvault_assets.engine.storage.store import Store
from pgvault_assets.engine.vault.pipeline import QUEUE_DEPTH, SDK_READ
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import IntegrityError, RestoreFailed
from pgvault_assets.settings import DatabaseUrl
from tests.dbcompare import database_snapshot
from tests.test_engine.helpers import DAY, back_up, marked, marker_intact, vault


class CountingReader:
    def __init__(self, inner: BinaryIO, counts: dict[str, int]) -> None:
        self._inner = inner
        self._counts = counts

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._counts["bytes"] += len(data)
        return data

    def close(self) -> None:
        self._inner.close()


class CountingStore:
    """The vault's store, counting the objects opened for reading and the bytes read."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.counts = {"opened": 0, "bytes": 0}
        self.opened: list[str] = []

    def open_reader(self, key: str, version_id: str | None = None) -> Any:
        self.counts["opened"] += 1
        self.opened.append(key)
        return CountingReader(self._inner.open_reader(key, version_id), self.counts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _counting_vault() -> tuple[Vault, CountingStore]:
    counted = vault()
    store = CountingStore(counted.store)
    counted.store = store  # type: ignore[assignment]
    return counted, store


def _siblings(url: str) -> list[str]:
    name = DatabaseUrl(url).dbname
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres") as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) AND datname <> %s",
            (name, name),
        ).fetchall()
    return [row[0] for row in rows]


@pytest.mark.parametrize("environment", ["local_env", "aws_env"])
def test_a_verified_restore_downloads_the_object_once(
    request, environment, awkward_database, make_database
):
    request.getfixturevalue(environment)
    manifest = back_up(awkward_database)
    target = make_database("staging")
    counted, store = _counting_vault()

    restore_backup(counted, DAY, DatabaseUrl(target), full_verify=True)

    assert store.opened.count(manifest.object_key) == 1
    assert store.counts["bytes"] - _context_bytes(store, manifest) == manifest.size_bytes
    assert database_snapshot(target) == database_snapshot(awkward_database)


def _context_bytes(store: CountingStore, manifest: Any) -> int:
    """Bytes of the small server-context object, read once beside the dump."""
    if manifest.server_context is None or manifest.server_context.object_key not in store.opened:
        return 0
    return manifest.server_context.size_bytes


@pytest.mark.parametrize("from_end", [1, 100, 5000])
def test_a_byte_flipped_near_the_end_is_refused_and_the_target_untouched(
    local_env, awkward_database, make_database, from_end
):
    back_up(awkward_database)
    path = local_env / "store" / object_key("test", DAY)
    data = bytearray(path.read_bytes())
    data[-from_end] ^= 0x01
    path.write_bytes(bytes(data))
    target = marked(make_database("staging"))

    with pytest.raises(IntegrityError, match="do not restore it"):
        restore_backup(vault(), DAY, DatabaseUrl(target), full_verify=True)

    assert marker_intact(target)
    assert _siblings(target) == []


FAILS_ON_RESTORE = """
    CREATE FUNCTION only_at_home(id int) RETURNS boolean LANGUAGE sql
        AS $$ SELECT $1 < 100 OR current_database() = '{home}' $$;
    CREATE TABLE a_fails (id int CHECK (only_at_home(id)));
    INSERT INTO a_fails VALUES (100);
    CREATE TABLE z_big AS
        SELECT g, md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text) AS h
        FROM generate_series(1, 1200000) g;
"""


def test_a_psql_failure_is_reported_without_reading_the_rest(local_env, make_database, monkeypatch):
    """The first table's rows break a CHECK on any other database: psql stops there, and the
    restore stops reading the object once psql has, not at its end (one session, so that
    nothing else drains the read-ahead meanwhile)."""
    monkeypatch.setenv("RESTORE_PARALLEL_LOADERS", "1")
    monkeypatch.setenv("RESTORE_READ_AHEAD_MIB", "1")
    source = make_database("src")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(FAILS_ON_RESTORE.format(home=DatabaseUrl(source).dbname))
    manifest = back_up(source)
    target = marked(make_database("staging"))
    counted, store = _counting_vault()

    with pytest.raises(RestoreFailed, match=r"psql failed while restoring \(.*a_fails_id_check"):
        restore_backup(counted, DAY, DatabaseUrl(target), full_verify=True)

    # Decryption reads ahead of psql by a bounded queue and the read-ahead setting (1 MiB,
    # and a pipe's worth), never to the object's end.
    read_ahead = (QUEUE_DEPTH + 4) * SDK_READ + 2 * 1024 * 1024
    assert manifest.size_bytes > 2 * read_ahead
    assert store.counts["bytes"] <= read_ahead
    assert marker_intact(target)
    assert _siblings(target) == []
