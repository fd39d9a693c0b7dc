"""The embedded default store: a directory tree that mirrors the S3 key layout, owner-only.

Like a versioned bucket, it keeps the bytes a manifest pins: each backup object is also hard
linked under `.versions/`, so a re-run that replaces the object leaves the backup it replaced
readable (its manifest records it) until retention deletes the date.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import uuid
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pgvault_assets.engine.storage.bucket import BucketSettings
from pgvault_assets.engine.storage.store.failures import local_error
from pgvault_assets.engine.storage.store.locks import HeldLock, local_lock
from pgvault_assets.engine.storage.store.protocol import (
    KeptVersion,
    ObjectWriter,
    PendingKind,
    PendingUpload,
    StoredObject,
)
from pgvault_assets.errors import StoreError

_VERSIONS = ".versions"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def private_dirs(path: Path) -> None:
    """Create `path` and its missing parents owner-only (mkdir's mode covers only the last)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


def _version_path(final: Path, version_id: str) -> Path:
    return final.parent / _VERSIONS / f"{final.name}.{version_id}"


class _LocalWriter:
    """Writes a temporary file and renames it into place; with `versioned`, also keeps a
    hard link under `.versions/`, so a manifest pinning that version still reads its own
    bytes after a re-run replaced the object (as S3 versioning does), at no extra space."""

    def __init__(self, final: Path, *, versioned: bool = False) -> None:
        self._final = final
        self._versioned = versioned
        self._tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex}")
        try:
            private_dirs(final.parent)
            self._file = open(self._tmp, "xb")  # noqa: SIM115 - closed in commit/abort
            os.chmod(self._tmp, 0o600)
        except OSError as exc:
            raise local_error(exc, "creating", self._tmp) from None

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            raise local_error(exc, "writing", self._final) from None

    def commit(self) -> str | None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            version_id = None
            if self._versioned:
                version_id = uuid.uuid4().hex
                kept = _version_path(self._final, version_id)
                private_dirs(kept.parent)
                os.link(self._tmp, kept)
                fsync_dir(kept.parent)
            os.replace(self._tmp, self._final)
            fsync_dir(self._final.parent)
        except OSError as exc:
            self.abort()
            raise local_error(exc, "committing", self._final) from None
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

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _walk(self, prefix: str, pattern: str) -> list[Path]:
        """Files matching `pattern` in the folder `prefix` is in, and in its subfolders."""
        head = prefix.rpartition("/")[0]
        self._path(head)  # refuses a prefix outside the store
        folder = self.root / head
        return list(folder.rglob(pattern)) if folder.exists() else []

    def _ensure_root(self) -> None:
        try:
            private_dirs(self.root)
        except OSError as exc:
            raise local_error(exc, "creating", self.root) from None

    def _unlink(self, path: Path, key: str) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(
                f"could not remove {key} from the local store ({exc.strerror}); "
                "check the permissions under BACKUP_LOCAL_DIR"
            ) from None

    def open_writer(
        self, key: str, *, retain_until: datetime | None = None, expected_bytes: int | None = None
    ) -> ObjectWriter:
        """One file, written whole: neither a lock nor a size hint changes how."""
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

    def put_bytes(self, key: str, data: bytes, *, retain_until: datetime | None = None) -> None:
        self._ensure_root()
        writer = _LocalWriter(self._path(key))
        writer.write(data)
        writer.commit()

    def put_new(
        self,
        key: str,
        data: bytes,
        *,
        retain_until: datetime | None = None,
        lock_mode: str | None = None,
    ) -> bool:
        """A link never replaces, so linking a finished temporary file writes once only. A
        local disk has no Object Lock: the owner-only permissions are its protection."""
        final = self._path(key)
        tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex}")
        try:
            private_dirs(final.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp, final)
        except FileExistsError:
            return False
        except OSError as exc:
            raise local_error(exc, "writing", final) from None
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

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

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
            for version in path.parent.glob(f"{_VERSIONS}/{path.name}.*"):
                version.unlink(missing_ok=True)
                deleted += 1
            with contextlib.suppress(OSError):
                (path.parent / _VERSIONS).rmdir()
            path.unlink()
            deleted += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise local_error(exc, "deleting", path) from None
        with contextlib.suppress(OSError):
            path.parent.rmdir()
        return deleted

    def any_version_left(self, key: str) -> bool:
        path = self._path(key)
        return path.exists() or any(path.parent.glob(f"{_VERSIONS}/{path.name}.*"))

    def overwrite_unprotected(self, key: str) -> str | None:
        """Never: a backup object's version is kept under `.versions/` while a manifest
        pins it."""
        return None

    def prune_versions(self, key: str, keep: Collection[str | None]) -> None:
        final = self._path(key)
        pinned = {f"{final.name}.{version}" for version in keep if version is not None}
        for old in final.parent.glob(f"{_VERSIONS}/{final.name}.*"):
            if old.name not in pinned:
                old.unlink(missing_ok=True)

    def kept_versions(self, prefix: str) -> builtins.list[KeptVersion]:
        """Each `.versions/` file: a backup killed between keeping its version and its
        manifest leaves one, and so does one killed before pruning the version it replaced."""
        found = []
        for path in sorted(self._walk(prefix, f"{_VERSIONS}/*")):
            name, _, version_id = path.name.rpartition(".")
            key = self._key(path.parent.parent / name)
            if not key.startswith(prefix):
                continue
            with contextlib.suppress(FileNotFoundError):
                written = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                found.append(KeptVersion(key, version_id, self._key(path), written))
        return found

    def remove_version(self, version: KeptVersion) -> None:
        self._unlink(_version_path(self._path(version.key), version.version_id), version.stored_as)

    def withdraw(self, key: str, version_id: str | None, back_to: str | None) -> bool:
        """Remove the kept version; the object goes back to the `back_to` version's bytes (linked
        into place as a write is) or is removed when the date had no backup before."""
        final = self._path(key)
        try:
            withdrawn = final if version_id is None else _version_path(final, version_id)
            ours = withdrawn.exists() and final.exists() and final.samefile(withdrawn)
            previous = None if back_to is None else _version_path(final, back_to)
            if ours and previous is not None and previous.exists():
                tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex}")
                os.link(previous, tmp)
                os.replace(tmp, final)
            elif ours:
                final.unlink()
            withdrawn.unlink(missing_ok=True)
            for folder in (final.parent / _VERSIONS, final.parent):
                with contextlib.suppress(OSError):  # only an empty one goes
                    folder.rmdir()
            if final.parent.exists():
                fsync_dir(final.parent)
        except OSError as exc:
            raise local_error(exc, "withdrawing", final) from None
        return True

    def pending_uploads(self, prefix: str) -> builtins.list[PendingUpload]:
        """Temporary files a killed writer left (each write's own `.partial-` file)."""
        found = []
        for path in self._walk(prefix, ".*.partial-*"):
            key = self._key(path)
            if not key.startswith(prefix):
                continue
            with contextlib.suppress(FileNotFoundError):
                written = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                found.append(PendingUpload(key, path.name, written, PendingKind.PARTIAL_FILE))
        return found

    def abort_upload(self, upload: PendingUpload) -> None:
        self._unlink(self._path(upload.key), upload.key)

    def inspect_bucket(self) -> BucketSettings | None:
        return None

    @contextlib.contextmanager
    def lock(self, name: str, *, wait_seconds: float = 0) -> Iterator[HeldLock]:
        """An flock: the kernel releases it when the holder dies, so a crash never wedges it."""
        self._ensure_root()
        with local_lock(self.root, name, wait_seconds=wait_seconds) as held:
            yield held
