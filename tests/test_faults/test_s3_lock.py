"""The S3 lock against holders that die elsewhere, stall, or lose it, with real moto requests.

A lock object carries a short lease that its holder's heartbeat renews with writes
conditional on the ETag it last wrote: a holder dead on another host blocks the others for one
lease only, two waiters never both supersede one expired lock, a holder that lost its lock
fails instead of reporting success, and a versioned bucket keeps no lock versions behind.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.config import Config

from pgvault_assets.engine.storage.store.s3 import S3Store
from pgvault_assets.errors import LockBusy
from tests.conftest import AwsEnv
from tests.test_faults.conftest import wait_for
from tests.test_faults.proxy import Fault, FaultyProxy

NAME = "test-backup-2024-01-15"
KEY = f".locks/{NAME}.json"
TTL = timedelta(seconds=2)


def other_store(aws_env: AwsEnv, **config: object) -> S3Store:
    """A store with a client of its own, as a pgvault on another host would have."""
    client = boto3.client("s3", config=Config(**config)) if config else boto3.client("s3")
    return S3Store(aws_env.bucket, aws_env.kms_key_id, client=client)


def foreign_lock(aws_env: AwsEnv, *, expires_in: timedelta, host: str = "db-host-b") -> datetime:
    """A lock object written by a pgvault on `host` that never renews it; returns its end."""
    expires_at = datetime.now(UTC) + expires_in
    body = {
        "holder": f"pid 4242 on {host}",
        "host": host,
        "pid": 4242,
        "token": uuid.uuid4().hex,
        "expires_at": expires_at.isoformat(),
    }
    aws_env.s3.put_object(Bucket=aws_env.bucket, Key=KEY, Body=json.dumps(body).encode())
    return expires_at


def lock_versions(aws_env: AwsEnv) -> tuple[list[dict], list[dict]]:
    listed = aws_env.s3.list_object_versions(Bucket=aws_env.bucket, Prefix=".locks/")
    return listed.get("Versions", []), listed.get("DeleteMarkers", [])


def current_lock(aws_env: AwsEnv) -> dict:
    return json.loads(aws_env.s3.get_object(Bucket=aws_env.bucket, Key=KEY)["Body"].read())


@pytest.fixture(params=["versioned", "unversioned"])
def any_bucket(request: pytest.FixtureRequest, aws_env: AwsEnv) -> Iterator[AwsEnv]:
    """The fixture's versioned bucket, or a plain one (no version ids to delete by)."""
    if request.param == "versioned":
        yield aws_env
        return
    bucket = f"pgvault-plain-{uuid.uuid4().hex[:12]}"
    aws_env.s3.create_bucket(Bucket=bucket)
    yield AwsEnv(
        aws_env.endpoint, bucket, aws_env.kms_key_id, aws_env.kms_key_arn, aws_env.s3, aws_env.kms
    )


def test_lock_of_a_holder_dead_on_another_host_is_taken_over_after_its_lease_not_before(
    aws_env: AwsEnv,
) -> None:
    expires_at = foreign_lock(aws_env, expires_in=timedelta(seconds=4))
    store = other_store(aws_env)

    with (
        pytest.raises(LockBusy, match="is locked by pid 4242 on db-host-b; wait for it"),
        store.lock(NAME, ttl=TTL),
    ):
        pass
    with store.lock(NAME, wait_seconds=30, ttl=TTL) as held:
        taken_at = datetime.now(UTC)
        assert held.still_held()
        assert current_lock(aws_env)["pid"] == os.getpid()
        versions, markers = lock_versions(aws_env)
        assert len(versions) == 1 and markers == []  # the dead holder's version is gone

    assert taken_at >= expires_at
    assert lock_versions(aws_env) == ([], [])


def test_live_holders_heartbeat_keeps_the_lock_past_its_first_lease(aws_env: AwsEnv) -> None:
    holder, waiter = other_store(aws_env), other_store(aws_env)

    with holder.lock(NAME, ttl=TTL) as held:
        with (
            pytest.raises(LockBusy, match=f"is locked by pid {os.getpid()} on "),
            waiter.lock(NAME, wait_seconds=3 * TTL.total_seconds(), ttl=TTL),
        ):
            pass
        assert held.still_held()
        assert datetime.fromisoformat(current_lock(aws_env)["expires_at"]) > datetime.now(UTC)

    with waiter.lock(NAME, ttl=TTL):  # released at once on exit, no lease to wait out
        pass


def test_two_waiters_on_one_expired_lock_only_one_takes_it(aws_env: AwsEnv) -> None:
    foreign_lock(aws_env, expires_in=timedelta(seconds=-1))
    both_read = threading.Barrier(2)
    first_decided = threading.Event()
    both_decided = threading.Barrier(2)
    outcomes: list[str] = []

    def contender() -> S3Store:
        """Its first read of the lock waits for the other's: both see it expired; then one
        finishes its attempt before the other acts on what it read."""
        store = other_store(aws_env)
        reads: list[int] = []

        def after_read(**_: object) -> None:
            if not reads:
                reads.append(1)
                if both_read.wait(timeout=30) == 1:
                    assert first_decided.wait(30)

        store.client.meta.events.register("after-call.s3.GetObject", after_read)
        return store

    def contend(store: S3Store) -> None:
        try:
            with store.lock(NAME, ttl=TTL):
                outcomes.append("took it")
                first_decided.set()
                both_decided.wait(timeout=30)  # hold it while the other decides
        except LockBusy:
            outcomes.append("busy")
            first_decided.set()
            both_decided.wait(timeout=30)

    threads = [threading.Thread(target=contend, args=(contender(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(outcomes) == ["busy", "took it"]
    assert lock_versions(aws_env) == ([], [])


def test_holder_whose_lock_was_taken_learns_it_before_its_next_step_and_leaves_the_takers_lock(
    any_bucket: AwsEnv,
) -> None:
    store = other_store(any_bucket)

    # A lease long beside the heartbeat: on a loaded machine a late renewal must not let the
    # lease run out first, which would be the other way of losing the lock.
    with store.lock(NAME, ttl=timedelta(seconds=20), heartbeat=timedelta(seconds=0.5)) as held:
        foreign_lock(any_bucket, expires_in=timedelta(minutes=5))
        wait_for(lambda: not held.still_held(), "the heartbeat to notice", timeout=30)
        with pytest.raises(
            LockBusy, match=r"lock .* was lost mid-operation \(taken over by pid 4242"
        ):
            held.check()

    assert current_lock(any_bucket)["host"] == "db-host-b"
    with (
        pytest.raises(LockBusy, match="is locked by pid 4242 on db-host-b"),
        store.lock(NAME, ttl=TTL),
    ):
        pass
    versions, markers = lock_versions(any_bucket)
    assert len(versions) == 1 and markers == []  # only the taker's: ours was deleted


def test_holder_that_cannot_renew_for_a_whole_lease_learns_it_before_its_next_step(
    faulty_proxy: FaultyProxy, aws_env: AwsEnv
) -> None:
    store = other_store(aws_env, retries={"max_attempts": 1}, read_timeout=2)

    with store.lock(NAME, ttl=TTL) as held:
        faulty_proxy.fault = Fault("upload", "cut", after_bytes=0, faults=-1)
        wait_for(lambda: not held.still_held(), "the lease to run out", timeout=30)
        assert faulty_proxy.broken >= 1  # a renewal was tried, and cut
        faulty_proxy.fault = None
        with pytest.raises(LockBusy, match=r"lost mid-operation \(its lease ran out"):
            held.check()

    assert lock_versions(aws_env) == ([], [])  # released once S3 was reachable again


def test_lock_taken_and_released_many_times_leaves_no_versions_in_a_versioned_bucket(
    aws_env: AwsEnv,
) -> None:
    store = other_store(aws_env)
    for _ in range(5):
        with store.lock(NAME, ttl=TTL):
            pass
    with store.lock(NAME, ttl=TTL, heartbeat=timedelta(seconds=0.2)):
        etags: set[str] = set()

        def renewed_twice() -> bool:
            etags.add(aws_env.s3.head_object(Bucket=aws_env.bucket, Key=KEY)["ETag"])
            return len(etags) >= 3

        wait_for(renewed_twice, "two renewals", timeout=30)

    assert lock_versions(aws_env) == ([], [])


def test_a_backup_whose_date_lock_is_taken_mid_dump_records_nothing(
    aws_env: AwsEnv, awkward_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run took the date over while this one dumped: this one must not commit."""
    import time
    from functools import partialmethod

    import psycopg

    from pgvault_assets.engine.basics.names import backup_lock_name
    from tests.test_engine.helpers import DAY, back_up, vault

    monkeypatch.setattr(S3Store, "lock", partialmethod(S3Store.lock, ttl=TTL))
    key = f".locks/{backup_lock_name('test', DAY)}.json"
    outcome: list[BaseException | object] = []
    # pg_dump waits on this table lock, so the backup holds its date lock while it dumps.
    with psycopg.connect(awkward_database) as blocker:
        blocker.execute("LOCK TABLE public.users IN ACCESS EXCLUSIVE MODE")

        def run() -> None:
            try:
                outcome.append(back_up(awkward_database))
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        wait_for(
            lambda: aws_env.s3.list_objects_v2(Bucket=aws_env.bucket, Prefix=key).get("KeyCount"),
            "the backup's date lock",
        )
        body = json.loads(aws_env.s3.get_object(Bucket=aws_env.bucket, Key=key)["Body"].read())
        body.update(token=uuid.uuid4().hex, holder="pid 4242 on db-host-b", host="db-host-b")
        aws_env.s3.put_object(Bucket=aws_env.bucket, Key=key, Body=json.dumps(body).encode())
        time.sleep(TTL.total_seconds())  # past a heartbeat, which finds the lock taken
    worker.join(120)
    (result,) = outcome
    assert isinstance(result, LockBusy), result
    assert "was lost mid-operation" in str(result)
    assert vault().list_manifests() == []
    stored = aws_env.s3.list_objects_v2(Bucket=aws_env.bucket, Prefix="test/").get("Contents", [])
    assert stored == []
    assert aws_env.s3.list_multipart_uploads(Bucket=aws_env.bucket).get("Uploads", []) == []
    taker = aws_env.s3.get_object(Bucket=aws_env.bucket, Key=key)["Body"].read()
    assert json.loads(taker)["host"] == "db-host-b"  # the taker's lock is left alone


def test_a_live_holder_whose_clock_runs_behind_is_not_taken_over_early(aws_env: AwsEnv) -> None:
    """Leases are judged on S3's clock: a holder 3 minutes behind wrote an `expires_at` already
    past by ours, yet it renewed a moment ago and its lease has a minute to run."""
    behind = datetime.now(UTC) - timedelta(minutes=3)
    body = {
        "holder": "pid 4242 on db-host-b",
        "host": "db-host-b",
        "pid": 4242,
        "token": uuid.uuid4().hex,
        "ttl_seconds": 60,
        "expires_at": (behind + timedelta(seconds=60)).isoformat(),
    }
    aws_env.s3.put_object(Bucket=aws_env.bucket, Key=KEY, Body=json.dumps(body).encode())

    with (
        pytest.raises(LockBusy, match="is locked by pid 4242 on db-host-b"),
        other_store(aws_env).lock(NAME, ttl=TTL),
    ):
        pass
    assert current_lock(aws_env)["token"] == body["token"]


def test_a_dead_looking_pid_of_another_container_with_this_host_name_is_not_taken_over(
    aws_env: AwsEnv,
) -> None:
    """Containers may share a host name but never a PID namespace: pid 4242 not running here
    says nothing about a holder in another container, so its lease is waited out."""
    import socket
    import subprocess

    finished = subprocess.Popen(["true"])
    finished.wait()  # a pid that is certainly not running here
    body = {
        "holder": f"pid {finished.pid} on {socket.gethostname()}",
        "host": socket.gethostname(),
        "pid": finished.pid,
        "process_space": "another-boot/pid:[1]",
        "token": uuid.uuid4().hex,
        "ttl_seconds": 60,
        "expires_at": (datetime.now(UTC) + timedelta(seconds=60)).isoformat(),
    }
    aws_env.s3.put_object(Bucket=aws_env.bucket, Key=KEY, Body=json.dumps(body).encode())
    with (
        pytest.raises(LockBusy, match=f"is locked by pid {finished.pid}"),
        other_store(aws_env).lock(NAME, ttl=TTL),
    ):
        pass
