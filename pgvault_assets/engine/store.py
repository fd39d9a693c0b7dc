"""Where backups live: a local directory (the embedded default) or an S3 bucket.

Both stores speak one interface so the engine never asks which it has. Objects are written
through an `ObjectWriter` that makes nothing visible until `commit()`: a local temporary file
renamed into place, or an S3 multipart upload completed. `abort()` leaves no trace.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import boto3
import botocore.exceptions
from botocore.config import Config

from pgvault_assets.engine.bucket import (
    BucketSettings,
    BucketUnreachable,
    first_use_warnings,
    read_bucket_settings,
)
from pgvault_assets.errors import LockBusy, StoreError

_log = logging.getLogger(__name__)
# A bucket's shortcomings are worth one line per process, not one per store a process opens.
_WARNED_BUCKETS: set[str] = set()

PART_SIZE = 8 * 1024 * 1024
BOTO_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 6}, connect_timeout=10, read_timeout=60
)
# botocore retries a request until its response headers arrive; a body cut or stalled after
# that surfaces from `read()`, so a download resumes itself from where it stopped.
RESUMABLE_READ_ERRORS = (
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.EndpointConnectionError,
)
RESUME_ATTEMPTS = 5
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


@dataclass(frozen=True)
class StoredObject:
    key: str
    size_bytes: int
    modified_at: datetime


@dataclass(frozen=True)
class PendingUpload:
    """An S3 multipart upload not completed or aborted: invisible to listings, yet billed."""

    key: str
    upload_id: str
    initiated_at: datetime


class ObjectWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    def commit(self) -> str | None:
        """Make the object visible; return its version id where the store keeps versions."""
        ...

    def abort(self) -> None: ...


class Store(Protocol):
    location: str

    def open_writer(self, key: str, *, retain_until: datetime | None = None) -> ObjectWriter:
        """`retain_until`: lock the object against deletion until then, where the store can."""
        ...

    def open_reader(self, key: str, version_id: str | None = None) -> BinaryIO: ...

    def put_bytes(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> None: ...

    def retained_until(self, key: str) -> datetime | None:
        """Until when some version of `key` cannot be deleted yet; None when it can be now."""
        ...

    def get_bytes(self, key: str) -> bytes | None: ...

    def list(self, prefix: str) -> list[StoredObject]: ...

    def delete(self, key: str) -> int: ...

    def lock(
        self, name: str, *, wait_seconds: float = 0
    ) -> contextlib.AbstractContextManager[HeldLock]: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_dirs(path: Path) -> None:
    """Create `path` and its missing parents owner-only (mkdir's mode covers only the last)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


def _local_error(exc: OSError, what: str, path: Path) -> StoreError:
    if exc.errno == errno.ENOSPC:
        return StoreError(
            f"the local store's disk is full while {what} {path}; free space or set BACKUP_LOCAL_DIR elsewhere"
        )
    return StoreError(
        f"local store failed while {what} {path} ({exc.strerror}); check BACKUP_LOCAL_DIR"
    )


def _version_path(final: Path, version_id: str) -> Path:
    return final.parent / ".versions" / f"{final.name}.{version_id}"


class _LocalWriter:
    """Writes a temporary file and renames it into place; with `versioned`, also keeps a
    hard link under `.versions/`, so a manifest pinning that version still reads its own
    bytes after a re-run replaced the object (as S3 versioning does), at no extra space."""

    def __init__(self, final: Path, *, versioned: bool = False) -> None:
        self._final = final
        self._versioned = versioned
        self._tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex}")
        try:
            _private_dirs(final.parent)
            self._file = open(self._tmp, "xb")  # noqa: SIM115 - closed in commit/abort
            os.chmod(self._tmp, 0o600)
        except OSError as exc:
            raise _local_error(exc, "creating", self._tmp) from None

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            raise _local_error(exc, "writing", self._final) from None

    def commit(self) -> str | None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            version_id = None
            if self._versioned:
                version_id = uuid.uuid4().hex
                kept = _version_path(self._final, version_id)
                _private_dirs(kept.parent)
                os.link(self._tmp, kept)
                _fsync_dir(kept.parent)
            os.replace(self._tmp, self._final)
            _fsync_dir(self._final.parent)
        except OSError as exc:
            self.abort()
            raise _local_error(exc, "committing", self._final) from None
        return version_id

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


class LocalStore:
    """Backups in a directory tree that mirrors the S3 key layout, owner-only permissions."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StoreError(f"refusing a key outside the store: {key!r}")
        return path

    def _ensure_root(self) -> None:
        try:
            _private_dirs(self.root)
        except OSError as exc:
            raise _local_error(exc, "creating", self.root) from None

    def open_writer(self, key: str, *, retain_until: datetime | None = None) -> ObjectWriter:
        self._ensure_root()
        return _LocalWriter(self._path(key), versioned=True)

    def open_reader(self, key: str, version_id: str | None = None) -> BinaryIO:
        path = self._path(key)
        if version_id is not None:
            if not re.fullmatch(r"[0-9a-f]{32}", version_id):
                raise StoreError(f"{key} has no version {version_id!r} in the local store")
            path = _version_path(path, version_id)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise StoreError(f"{key} is missing from the local store {self.root}") from None

    def prune_versions(self, key: str, keep: str | None) -> None:
        """Drop kept versions of `key` other than `keep`, once a newer backup is recorded."""
        final = self._path(key)
        for old in final.parent.glob(f".versions/{final.name}.*"):
            if keep is None or old.name != f"{final.name}.{keep}":
                old.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> None:
        self._ensure_root()
        writer = _LocalWriter(self._path(key))
        writer.write(data)
        writer.commit()

    def put_new(self, key: str, data: bytes) -> bool:
        """Write `key` only if it does not exist; False if it does. A link never replaces."""
        final = self._path(key)
        tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex}")
        try:
            _private_dirs(final.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp, final)
        except FileExistsError:
            return False
        except OSError as exc:
            raise _local_error(exc, "writing", final) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return True

    def retained_until(self, key: str) -> datetime | None:
        """A local disk has no Object Lock: the owner-only permissions are its protection."""
        return None

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[StoredObject]:
        base = self._path(prefix) if prefix else self.root
        start = base if base.is_dir() else base.parent
        found = []
        if not start.exists():
            return []
        for path in start.rglob("*"):
            relative = path.relative_to(self.root)
            if not path.is_file() or any(part.startswith(".") for part in relative.parts):
                continue
            key = relative.as_posix()
            if key.startswith(prefix):
                info = path.stat()
                found.append(
                    StoredObject(key, info.st_size, datetime.fromtimestamp(info.st_mtime, UTC))
                )
        return sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> int:
        """Delete `key` and every kept version of it."""
        path = self._path(key)
        deleted = 0
        try:
            for version in path.parent.glob(f".versions/{path.name}.*"):
                version.unlink(missing_ok=True)
                deleted += 1
            with contextlib.suppress(OSError):
                (path.parent / ".versions").rmdir()
            path.unlink()
            deleted += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _local_error(exc, "deleting", path) from None
        with contextlib.suppress(OSError):
            path.parent.rmdir()
        return deleted

    def partial_uploads(self) -> list[Path]:
        """Temporary files left by a killed writer (a date's next backup or cleanup removes them)."""
        return [p for p in self.root.rglob(".*.partial-*")] if self.root.exists() else []

    @contextlib.contextmanager
    def lock(self, name: str, *, wait_seconds: float = 0) -> Iterator[HeldLock]:
        """An flock: the kernel releases it when the holder dies, so a crash never wedges it."""
        self._ensure_root()
        path = self.root / ".locks" / f"{name}.lock"
        try:
            path.parent.mkdir(exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise _local_error(exc, "locking", path) from None
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


def _holder_died_here(info: dict) -> bool:
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


def _lease_left(info: dict, response: dict | None = None) -> float:
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
            return (ends - server_now).total_seconds()
    except (KeyError, TypeError, ValueError):
        pass
    try:
        expires_at = datetime.fromisoformat(info["expires_at"])
        return (expires_at - datetime.now(UTC)).total_seconds()
    except (KeyError, TypeError, ValueError):
        return math.inf


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

    def __init__(self, store: S3Store, name: str, ttl: timedelta, interval: timedelta) -> None:
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
        assert self._written is not None
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
            raise _s3_error(exc, f"write of {self._key}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise _s3_error(exc, f"write of {self._key}") from None
        self._replace(_LockVersion(response["ETag"], response.get("VersionId")), lease_ends)
        return True

    def _read(self) -> tuple[dict, _LockVersion, dict] | None:
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

    def _adopt(self, info: dict, version: _LockVersion, response: dict) -> None:
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


def _s3_error(exc: Exception, what: str) -> StoreError:
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "error")
        hint = {
            "AccessDenied": "check the role's s3 permissions and the bucket policy",
            "NoSuchBucket": "check BACKUP_S3_BUCKET (run pgvault init-storage to create it)",
            "KMS.DisabledException": "the KMS key is disabled; enable it",
        }.get(code, "see the S3 error code")
        return StoreError(f"S3 {what} failed ({code}); {hint}")
    return StoreError(
        f"S3 {what} failed ({type(exc).__name__}: {exc}); check the network and AWS_ENDPOINT_URL"
    )


class _S3Writer:
    """A multipart upload fed part by part; at most two parts in flight bounds memory."""

    def __init__(self, store: S3Store, key: str, lock: dict[str, Any] | None = None) -> None:
        self._store = store
        self._key = key
        self._lock = lock or {}
        self._buffer = bytearray()
        self._parts: list[Future[dict]] = []
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="s3-part")
        self._digests: list[bytes] = []
        try:
            self._upload_id = store.client.create_multipart_upload(
                Bucket=store.bucket,
                Key=key,
                ServerSideEncryption="aws:kms",
                SSEKMSKeyId=store.kms_key_id,
                ChecksumAlgorithm="SHA256",
                **self._lock,
            )["UploadId"]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _s3_error(exc, f"upload of {key}") from None

    def _upload(self, number: int, data: bytes, digest: bytes) -> dict:
        checksum = base64.b64encode(digest).decode()
        response = self._store.client.upload_part(
            Bucket=self._store.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
            ChecksumSHA256=checksum,
        )
        return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}

    def _flush(self) -> None:
        if len(self._parts) >= 2:
            self._parts[-2].result()
        data = bytes(self._buffer)
        self._buffer.clear()
        digest = hashlib.sha256(data).digest()
        self._digests.append(digest)
        self._parts.append(self._pool.submit(self._upload, len(self._parts) + 1, data, digest))

    def write(self, data: bytes) -> None:
        self._buffer += data
        try:
            while len(self._buffer) >= PART_SIZE:
                self._flush()
        except Exception as exc:
            self.abort()
            raise _s3_error(exc, f"upload of {self._key}") from None

    def commit(self) -> str | None:
        try:
            if self._buffer or not self._parts:
                self._flush()
            parts = [future.result() for future in self._parts]
            response = self._store.client.complete_multipart_upload(
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": parts},
            )
        except Exception as exc:
            self.abort()
            raise _s3_error(exc, f"upload of {self._key}") from None
        finally:
            self._pool.shutdown(wait=True)
        expected = base64.b64encode(hashlib.sha256(b"".join(self._digests)).digest()).decode()
        reported = response.get("ChecksumSHA256")
        if reported and reported.split("-")[0] != expected:
            raise StoreError(f"S3 reported a different checksum for {self._key}; re-run the backup")
        version_id = response.get("VersionId")
        if self._lock and version_id:
            self._store.ensure_retention(self._key, version_id, self._lock)
        return version_id

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            self._store.client.abort_multipart_upload(
                Bucket=self._store.bucket, Key=self._key, UploadId=self._upload_id
            )


class _ResumingReader:
    """An object's body that survives a cut or stalled connection: it asks again, with backoff,
    for the bytes from where the last response stopped, pinned to the same version and ETag,
    so the bytes read are always one object's, never a splice of two."""

    def __init__(self, store: S3Store, key: str, version_id: str | None) -> None:
        self._store = store
        self._key = key
        self._pin: dict[str, str] = {"VersionId": version_id} if version_id else {}
        self._offset = 0
        self._body = self._open()

    def _open(self) -> BinaryIO:
        extra = dict(self._pin)
        if self._offset:
            extra["Range"] = f"bytes={self._offset}-"
        try:
            response = self._store.client.get_object(
                Bucket=self._store.bucket, Key=self._key, **extra
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _s3_error(exc, f"download of {self._key}") from None
        self._pin.setdefault("IfMatch", response["ETag"])
        return response["Body"]

    def read(self, size: int = -1) -> bytes:
        attempt = 0
        while True:
            try:
                chunk = self._body.read(size if size >= 0 else None)
            except RESUMABLE_READ_ERRORS as exc:
                attempt += 1
                if attempt > RESUME_ATTEMPTS:
                    raise _s3_error(exc, f"download of {self._key}") from None
                with contextlib.suppress(Exception):
                    self._body.close()
                time.sleep(min(0.5 * 2 ** (attempt - 1), 8))
                self._body = self._open()
                continue
            self._offset += len(chunk)
            return chunk

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()


class S3Store:
    """Backups in S3, written with SSE-KMS under the backup key; reads pin object versions."""

    def __init__(
        self,
        bucket: str,
        kms_key_id: str,
        client: object | None = None,
        *,
        read_timeout_seconds: int = 60,
        lock_mode: str = "governance",
    ) -> None:
        self.bucket = bucket
        self.kms_key_id = kms_key_id
        self.lock_mode = lock_mode.upper()
        self._bucket_settings: BucketSettings | None = None
        self.client = client or boto3.client(
            "s3", config=BOTO_CONFIG.merge(Config(read_timeout=read_timeout_seconds))
        )
        self.location = f"s3://{bucket}"

    def bucket_settings(self) -> BucketSettings:
        """The bucket's settings, read on first use; what falls short is logged once a process."""
        if self._bucket_settings is not None:
            return self._bucket_settings
        try:
            found = read_bucket_settings(self.client, self.bucket, with_encryption=False)
        except BucketUnreachable:
            return BucketSettings(self.bucket, exists=False)
        if found.exists:
            self._bucket_settings = found
            if self.bucket not in _WARNED_BUCKETS:
                _WARNED_BUCKETS.add(self.bucket)
                for warning in first_use_warnings(found):
                    _log.warning(warning)
        return found

    def put_new(self, key: str, data: bytes, **extra: Any) -> bool:
        """Write `key` only if it does not exist (`If-None-Match: *`); False if it does."""
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                IfNoneMatch="*",
                ServerSideEncryption="aws:kms",
                SSEKMSKeyId=self.kms_key_id,
                ChecksumAlgorithm="SHA256",
                **extra,
            )
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return False
            raise _s3_error(exc, f"write of {key}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise _s3_error(exc, f"write of {key}") from None
        return True

    def lock_arguments(
        self, retain_until: datetime | None, mode: str | None = None
    ) -> dict[str, Any]:
        """Object Lock parameters for a write, or none when the bucket has no Object Lock."""
        if retain_until is None or not self.bucket_settings().object_lock:
            return {}
        return {
            "ObjectLockMode": (mode or self.lock_mode).upper(),
            "ObjectLockRetainUntilDate": retain_until,
        }

    def ensure_retention(self, key: str, version_id: str, lock: dict[str, Any]) -> None:
        """Set the lock again if the server dropped it (moto and some S3-compatible servers
        ignore Object Lock on multipart uploads); a backup is never left unlocked silently."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, VersionId=version_id)
            if head.get("ObjectLockRetainUntilDate") is None:
                self.client.put_object_retention(
                    Bucket=self.bucket,
                    Key=key,
                    VersionId=version_id,
                    Retention={
                        "Mode": lock["ObjectLockMode"],
                        "RetainUntilDate": lock["ObjectLockRetainUntilDate"],
                    },
                )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _s3_error(exc, f"object lock of {key}") from None

    def retained_until(self, key: str) -> datetime | None:
        """The latest Object Lock date among `key`'s versions still in the future, if any."""
        if not self.bucket_settings().object_lock:
            return None
        now = datetime.now(UTC)
        latest: datetime | None = None
        try:
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=key
            )
            for page in pages:
                for item in page.get("Versions", []):
                    if item["Key"] != key:
                        continue
                    head = self.client.head_object(
                        Bucket=self.bucket, Key=key, VersionId=item["VersionId"]
                    )
                    until = head.get("ObjectLockRetainUntilDate")
                    if until is not None and until > now and (latest is None or until > latest):
                        latest = until
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _s3_error(exc, f"object lock check of {key}") from None
        return latest

    def open_writer(self, key: str, *, retain_until: datetime | None = None) -> ObjectWriter:
        return _S3Writer(self, key, self.lock_arguments(retain_until))

    def open_reader(self, key: str, version_id: str | None = None) -> BinaryIO:
        return _ResumingReader(self, key, version_id)  # type: ignore[return-value]

    def put_bytes(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> None:
        lock = self.lock_arguments(retain_until)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ServerSideEncryption="aws:kms",
                SSEKMSKeyId=self.kms_key_id,
                ChecksumAlgorithm="SHA256",
                **lock,
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _s3_error(exc, f"write of {key}") from None

    def get_bytes(self, key: str) -> bytes | None:
        self.bucket_settings()
        found = self.get_with_response(key)
        return None if found is None else found[0]

    def get_with_response(self, key: str) -> tuple[bytes, dict[str, Any]] | None:
        """The current version's bytes and S3's response (version, ETag, dates); None if absent."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(), response
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise _s3_error(exc, f"read of {key}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise _s3_error(exc, f"read of {key}") from None

    def list(self, prefix: str) -> list[StoredObject]:
        self.bucket_settings()
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                for item in page.get("Contents", []):
                    found.append(StoredObject(item["Key"], item["Size"], item["LastModified"]))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _s3_error(exc, f"listing of {prefix}") from None
        return found

    def delete(self, key: str) -> int:
        """Delete every version and delete marker of `key`: expired means gone, not hidden."""
        deleted = 0
        try:
            pages = self.client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=key
            )
            for page in pages:
                for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    if item["Key"] != key:
                        continue
                    self.client.delete_object(
                        Bucket=self.bucket, Key=key, VersionId=item["VersionId"]
                    )
                    deleted += 1
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _s3_error(exc, f"delete of {key}") from None
        return deleted

    def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        """Every unfinished multipart upload under `prefix`, so cleanup can judge each one."""
        found = []
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                for upload in page.get("Uploads", []):
                    found.append(
                        PendingUpload(upload["Key"], upload["UploadId"], upload["Initiated"])
                    )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _s3_error(exc, f"listing of unfinished uploads under {prefix}") from None
        return found

    def abort_upload(self, upload: PendingUpload) -> None:
        """Abort one unfinished upload; one already gone is no error."""
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id
            )
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise _s3_error(exc, f"abort of the unfinished upload of {upload.key}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise _s3_error(exc, f"abort of the unfinished upload of {upload.key}") from None

    @contextlib.contextmanager
    def lock(
        self,
        name: str,
        *,
        wait_seconds: float = 0,
        ttl: timedelta = LOCK_TTL,
        heartbeat: timedelta | None = None,
    ) -> Iterator[HeldLock]:
        """A lock object whose short lease a heartbeat renews (every `ttl`/3 unless `heartbeat`):
        a holder that died on any host blocks the others for one lease at most, and a holder
        that lost its lock learns it from `HeldLock.check()` before its next visible step."""
        lease = _S3Lease(self, name, ttl, heartbeat or ttl / 3)
        lease.acquire(wait_seconds)
        try:
            yield lease.held
        finally:
            lease.release()
