"""The two kinds of lock a store hands out, and the lease a holder keeps them by.

A local store locks with `flock`: the kernel releases it when its holder dies. S3 has no such
kernel, so its lock is an object holding a short lease that a heartbeat renews; a holder that
died anywhere blocks the others for one lease at most.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import botocore.exceptions

from pgvault_assets.engine.storage.store.failures import local_error, s3_error
from pgvault_assets.engine.storage.store.s3_access import S3Bucket
from pgvault_assets.errors import LockBusy, StoreError

_log = logging.getLogger(__name__)
# A lock's lease: how long a holder that died anywhere blocks the others. Its heartbeat
# renews it every third of that, so a live holder keeps it through two missed renewals.
LOCK_TTL = timedelta(minutes=2)
# A conditional write or delete of a lock object that found it changed or gone.
_LOCK_CONFLICT_CODES = (
    "PreconditionFailed",
    "ConditionalRequestConflict",
    "NoSuchKey",
    "412",
    "409",
    "404",
)


class HeldLock:
    """A held lock as its holder sees it. A lock kept by a heartbeat can be lost while the work
    runs (S3 unreachable for a whole lease, or taken over): the work calls `check()` before each
    step that makes its result visible (an object commit, a manifest, a delete), and stops
    there. Leaving the lock never raises: work that finished while it held the lock is done."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._guard = threading.Lock()
        self._lost: str | None = None
        self._lease_ends: float | None = None  # on `_lease_clock`; None: held until released

    def still_held(self) -> bool:
        with self._guard:
            ends = self._lease_ends
        if ends is not None and _lease_clock() >= ends:
            self._lose("its lease ran out before a renewal reached the store")
        return self._lost is None

    def check(self) -> None:
        """Raise `LockBusy` if the lock was lost: what it protected cannot be trusted."""
        if not self.still_held():
            raise LockBusy(
                f"the lock {self.name} was lost mid-operation ({self._lost}); treat this run "
                "as failed and run it again once no other pgvault runs it"
            )

    def _extend(self, lease_ends: float) -> None:
        with self._guard:
            self._lease_ends = lease_ends

    def _lose(self, reason: str) -> None:
        """Record the first reason the lock was lost; a lost lock stays lost."""
        with self._guard:
            if self._lost is not None:
                return
            self._lost = reason
        _log.warning(
            "lost the lock %s: %s; the operation holding it stops before its next step",
            self.name,
            reason,
        )


@contextlib.contextmanager
def local_lock(root: Path, name: str, *, wait_seconds: float = 0) -> Iterator[HeldLock]:
    """An flock under `root/.locks`: the kernel releases it when the holder dies, so a crash
    never wedges it. `root` must exist."""
    path = root / ".locks" / f"{name}.lock"
    try:
        path.parent.mkdir(exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise local_error(exc, "locking", path) from None
    with open(fd, "r+") as handle:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise LockBusy(
                        f"{name} is locked by {holder}; wait for it to finish and try again"
                    ) from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        try:
            yield HeldLock(name)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def s3_lock(
    store: S3Bucket, name: str, *, wait_seconds: float, ttl: timedelta, heartbeat: timedelta | None
) -> Iterator[HeldLock]:
    """A lock object whose short lease a heartbeat renews (every `ttl`/3 unless `heartbeat`)."""
    lease = _S3Lease(store, name, ttl, heartbeat or ttl / 3)
    lease.acquire(wait_seconds)
    try:
        yield lease.held
    finally:
        lease.release()


def _process_space() -> str:
    """This machine's boot and PID namespace: a pid means the same process only within both
    (containers may share a host name, never a PID namespace and a boot)."""
    parts = []
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(path).read_text().strip() if "boot" in path else os.readlink(path))
        except OSError:
            parts.append("?")
    return "/".join(parts)


def _holder_died_here(info: dict[str, Any]) -> bool:
    """A lock holder in this process space whose process is gone: a crash need not wait for
    the lease. Anything less certain (another host, container or boot) waits for it."""
    pid = info.get("pid")
    if (
        info.get("host") != socket.gethostname()
        or info.get("process_space") != _process_space()
        or "?" in _process_space()
        or not isinstance(pid, int)
        or pid <= 0
    ):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _lease_clock() -> float:
    """Seconds on a clock that keeps running while the machine is suspended (a paused VM's
    lease must count as spent, since other hosts' clocks ran on)."""
    return time.clock_gettime(getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC))


def _lease_left(info: dict[str, Any], response: dict[str, Any] | None = None) -> float:
    """Seconds until a lock object's lease ends (negative once it has).

    Measured on S3's clock when it can be: the object's `LastModified` (the holder's last
    renewal) plus its `ttl_seconds`, against the response's `Date`. Hosts' clocks may be
    minutes apart, and a 2-minute lease judged on the reader's own clock could be taken from a
    live holder. S3 stamps whole seconds, so a second is added to stay on the safe side. A lock
    object without a readable lease never ends by itself; an operator removes it.
    """
    try:
        if response is not None and isinstance(info.get("ttl_seconds"), int | float):
            server_now = parsedate_to_datetime(response["ResponseMetadata"]["HTTPHeaders"]["date"])
            ends = response["LastModified"] + timedelta(seconds=info["ttl_seconds"] + 1)
            return float((ends - server_now).total_seconds())
    except (KeyError, TypeError, ValueError):
        pass
    try:
        expires_at = datetime.fromisoformat(info["expires_at"])
        return (expires_at - datetime.now(UTC)).total_seconds()
    except (KeyError, TypeError, ValueError):
        return math.inf


@dataclass(frozen=True)
class _LockVersion:
    """One write of a lock object: its ETag for conditional writes, its version to delete."""

    etag: str
    version_id: str | None


class _S3Lease:
    """One holder's lock object and the heartbeat that renews its lease every `interval`.

    Every write after the first is conditional on the ETag this holder last saw, so a renewal
    never overwrites a lock someone else took, and of two waiters superseding one expired lock
    only one succeeds. Each version it replaces or leaves is deleted by its id, so a versioned
    bucket keeps neither old versions nor delete markers under `.locks/`.
    """

    def __init__(self, store: S3Bucket, name: str, ttl: timedelta, interval: timedelta) -> None:
        self._store = store
        self._key = f".locks/{name}.json"
        self._ttl = ttl.total_seconds()
        self._interval = interval.total_seconds()
        self._token = uuid.uuid4().hex
        self._written: _LockVersion | None = None
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(
            target=self._beat, name=f"pgvault-lock-{name}", daemon=True
        )
        self.held = HeldLock(name)

    def acquire(self, wait_seconds: float) -> None:
        deadline = time.monotonic() + wait_seconds
        while True:
            if self._write({"IfNoneMatch": "*"}):
                break
            found = self._read()
            if found is None:  # released between our write and our read: try again soon
                if time.monotonic() >= deadline:
                    raise LockBusy(
                        f"{self.held.name} keeps changing hands; wait a moment and try again"
                    )
                time.sleep(0.1)
                continue
            info, version, response = found
            if info.get("token") == self._token:  # our own write; its response was lost
                self._adopt(info, version, response)
                break
            if _lease_left(info, response) <= 0 or _holder_died_here(info):
                if self._write({"IfMatch": version.etag}):
                    self._drop(version)  # the dead holder's version, for good
                    break
                continue  # another waiter superseded it first: look at theirs
            if time.monotonic() >= deadline:
                holder = info.get("holder", "another process")
                raise LockBusy(
                    f"{self.held.name} is locked by {holder}; wait for it to finish and try again"
                )
            time.sleep(min(1.0, max(0.1, deadline - time.monotonic())))
        self._heartbeat.start()

    def release(self) -> None:
        """Stop the heartbeat, then delete this holder's own version of the lock object."""
        self._stop.set()
        if self._heartbeat.is_alive():
            # A renewal stuck in S3 retries must not hold the caller; the thread is a daemon.
            self._heartbeat.join(timeout=self._interval)
        if self._written is None:
            return
        written, self._written = self._written, None
        # A version id names only our own write; without versions, the ETag guards the delete.
        guard = (
            {"VersionId": written.version_id} if written.version_id else {"IfMatch": written.etag}
        )
        try:
            self._store.client.delete_object(Bucket=self._store.bucket, Key=self._key, **guard)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in _LOCK_CONFLICT_CODES:
                _log.warning("could not release the lock %s (%s)", self.held.name, exc)
        except botocore.exceptions.BotoCoreError as exc:
            _log.warning(
                "could not release the lock %s (%s); it frees itself when its lease ends",
                self.held.name,
                exc,
            )

    def _beat(self) -> None:
        pause = self._interval
        while not self._stop.wait(pause) and self.held.still_held():
            try:
                if not self._renew():
                    return
                pause = self._interval
            except StoreError as exc:
                _log.warning("could not renew the lock %s (%s); retrying", self.held.name, exc)
                pause = self._interval / 3

    def _renew(self) -> bool:
        """Extend the lease if the lock object is still ours; False once it is not."""
        if self._written is None:  # released while this renewal waited: stop beating
            raise LockBusy(f"the lock {self.held.name} was released; its heartbeat stops")
        if self._write({"IfMatch": self._written.etag}):
            return True
        found = self._read()
        if found is not None and found[0].get("token") == self._token:
            self._adopt(*found)  # a conflict, or our own write with its reply lost
            return True
        taker = "its lock object was deleted"
        if found is not None:
            taker = f"taken over by {found[0].get('holder', 'another process')}"
        self.held._lose(taker)
        return False

    def _write(self, condition: dict[str, str]) -> bool:
        """Write a fresh lease under `condition`; False when the condition does not hold."""
        lease_ends = _lease_clock() + self._ttl
        body = json.dumps(
            {
                "holder": f"pid {os.getpid()} on {socket.gethostname()}",
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "process_space": _process_space(),
                "token": self._token,
                "ttl_seconds": self._ttl,
                "expires_at": (datetime.now(UTC) + timedelta(seconds=self._ttl)).isoformat(),
            }
        ).encode()
        try:
            response = self._store.client.put_object(
                Bucket=self._store.bucket,
                Key=self._key,
                Body=body,
                ServerSideEncryption="aws:kms",
                SSEKMSKeyId=self._store.kms_key_id,
                ChecksumAlgorithm="SHA256",
                **condition,
            )
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _LOCK_CONFLICT_CODES:
                return False
            raise s3_error(exc, f"write of {self._key}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise s3_error(exc, f"write of {self._key}") from None
        self._replace(_LockVersion(response["ETag"], response.get("VersionId")), lease_ends)
        return True

    def _read(self) -> tuple[dict[str, Any], _LockVersion, dict[str, Any]] | None:
        found = self._store.get_with_response(self._key)
        if found is None:
            return None
        data, response = found
        try:
            info = json.loads(data)
        except ValueError:
            info = {}
        if not isinstance(info, dict):
            info = {}
        return info, _LockVersion(response["ETag"], response.get("VersionId")), response

    def _adopt(self, info: dict[str, Any], version: _LockVersion, response: dict[str, Any]) -> None:
        self._replace(version, _lease_clock() + _lease_left(info, response))

    def _replace(self, version: _LockVersion, lease_ends: float) -> None:
        """Hold `version` from now on; our previous version, if any, is deleted for good."""
        previous, self._written = self._written, version
        self.held._extend(lease_ends)
        if previous is not None and previous.version_id != version.version_id:
            self._drop(previous)

    def _drop(self, version: _LockVersion) -> None:
        """Delete a superseded version for good (no-op without versioning: it was replaced)."""
        if not version.version_id:
            return
        try:
            self._store.client.delete_object(
                Bucket=self._store.bucket, Key=self._key, VersionId=version.version_id
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            _log.warning("could not delete an old version of %s (%s)", self._key, exc)
