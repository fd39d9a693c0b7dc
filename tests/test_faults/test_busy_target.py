"""A restore while clients hold connections to the target, one of them mid-transaction."""

from __future__ import annotations

import threading

import psycopg
import pytest

from pgvault_assets.engine.restore.restore import restore_backup
from pgvault_assets.settings import DatabaseUrl
from tests.test_engine.helpers import DAY, back_up, vault
from tests.test_faults.conftest import fill, wait_for


def test_restore_swaps_in_the_new_data_while_clients_hold_connections_to_the_target(
    local_env, make_database
) -> None:
    source = make_database("src")
    fill(source, 1_000)
    back_up(source)
    target = make_database("staging")
    with psycopg.connect(target, autocommit=True) as setup:
        setup.execute("CREATE TABLE old_data (id int); INSERT INTO old_data VALUES (1)")
    idle = psycopg.connect(target, autocommit=True)
    in_transaction = psycopg.connect(target)
    in_transaction.execute("UPDATE old_data SET id = 2")  # uncommitted, holds a row lock
    busy = psycopg.connect(target, autocommit=True)
    busy_pid = busy.info.backend_pid
    query_failed: list[BaseException] = []

    def long_query() -> None:
        try:
            busy.execute("SELECT pg_sleep(60)")
        except psycopg.Error as exc:
            query_failed.append(exc)

    runner = threading.Thread(target=long_query)
    runner.start()
    # Autocommit: inside one transaction pg_stat_activity is read once and cached, so a probe
    # that first looked before the query started would never see it start.
    with psycopg.connect(target, autocommit=True) as probe:
        wait_for(
            lambda: probe.execute(
                "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'", (busy_pid,)
            ).fetchall(),
            "the long query to start",
        )

    result = restore_backup(vault(), DAY, DatabaseUrl(target))
    runner.join(10)

    assert query_failed, "the long-running client was not disconnected"
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1_000,)
        assert conn.execute("SELECT to_regclass('public.old_data')").fetchone() == (None,)
    for client in (idle, in_transaction):
        with pytest.raises(psycopg.OperationalError):
            client.execute("SELECT 1")
        client.close()
    busy.close()
    assert result.previous is not None
