"""The embedded default keeps everything owner-only, whatever the umask (a key file others can
read is refused: tests/test_engine/test_faults.py)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pgvault_assets.engine.approvals import audit
from pgvault_assets.engine.recovery.restore_check import RestoreProof, record_restore_verified
from pgvault_assets.engine.vault.keys import LocalKeyProvider
from tests.test_engine.helpers import DAY, back_up, vault


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 000: any folder or file pgvault does not make owner-only itself shows up as 0777."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[path.relative_to(root).as_posix()] = stat.S_IMODE(path.stat().st_mode)
    return found


def test_everything_in_the_local_store_is_owner_only_whatever_the_umask(
    local_env, awkward_database, open_umask
):
    back_up(awkward_database)
    v = vault()
    now = datetime.now(UTC)
    audit.append(v, "staging", audit.STAGING_RESTORE, {"date": DAY.isoformat()}, now=now)
    record_restore_verified(v, RestoreProof(DAY, now, "scratch", 3, 10, 1.0, "0" * 64))

    found = modes(local_env / "store")
    assert any("/audit/staging/" in path for path in found)
    loose = {
        path: oct(mode)
        for path, mode in found.items()
        if mode != (0o700 if (local_env / "store" / path).is_dir() else 0o600)
    }
    assert loose == {}


def test_a_new_key_file_and_every_folder_made_for_it_are_owner_only(tmp_path, open_umask):
    key = LocalKeyProvider(tmp_path / "secrets" / "pgvault" / "backup.key")
    key.ensure()

    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "secrets" / "pgvault").stat().st_mode) == 0o700


def test_an_existing_key_file_is_never_overwritten(tmp_path):
    key = LocalKeyProvider(tmp_path / "backup.key")
    key.ensure()
    before = key.path.read_bytes()
    key.ensure()
    assert key.path.read_bytes() == before
