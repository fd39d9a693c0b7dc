"""Fixtures for the recovery tests: real SSH keys and a production/staging pair with a backup."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from pgvault_assets.engine.restore import restore
from pgvault_assets.engine.vault.manifest import Manifest
from tests.test_engine.helpers import back_up


@pytest.fixture(autouse=True)
def no_recovery_settings_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own approvers file or drill queries must not reach these tests."""
    for name in ("RESTORE_APPROVERS_FILE", "RESTORE_REQUEST_TTL_HOURS", "DRILL_QUERIES_FILE"):
        monkeypatch.delenv(name, raising=False)


@dataclass(frozen=True)
class Approvers:
    file: Path
    alice: Path
    bob: Path
    mallory: Path  # a real key, but not in the approvers file


def make_key(folder: Path, name: str) -> Path:
    key = folder / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key


def allowed_signer_line(principal: str, key: Path) -> str:
    kind, blob = key.with_suffix(".pub").read_text().split()[:2]
    return f"{principal} {kind} {blob}\n"


@pytest.fixture
def approvers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Approvers:
    folder = tmp_path / "keys"
    folder.mkdir()
    alice, bob, mallory = (make_key(folder, n) for n in ("alice", "bob", "mallory"))
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(
        allowed_signer_line("alice@example.org", alice)
        + allowed_signer_line("bob@example.org", bob)
    )
    monkeypatch.setenv("RESTORE_APPROVERS_FILE", str(allowed))
    return Approvers(allowed, alice, bob, mallory)


@dataclass(frozen=True)
class Databases:
    production: str
    staging: str
    manifest: Manifest


@pytest.fixture
def databases(
    local_env: Path,
    awkward_database: str,
    make_database: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> Databases:
    """Production is the awkward database, backed up as yesterday; staging starts empty."""
    staging = make_database("staging")
    monkeypatch.setenv("DATABASE_URL", awkward_database)
    monkeypatch.setenv("STAGING_DATABASE_URL", staging)
    return Databases(awkward_database, staging, back_up(awkward_database))


def scalar(url: str, query: str, params: tuple = ()) -> object:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def execute(url: str, statement: str, params: tuple = ()) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


@pytest.fixture
def scratch_made(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the scratch databases this test's drills and row recoveries restored
    into, heard where the engine restores one (the restore itself runs unchanged), so a test
    asserts on its own scratch and never counts another run's on the same server."""
    made: list[str] = []
    real = restore.restore_backup

    def restore_noting_scratch(vault, day, target_url, **options):
        if options.get("throwaway"):
            made.append(target_url.dbname)
        return real(vault, day, target_url, **options)

    monkeypatch.setattr(restore, "restore_backup", restore_noting_scratch)
    return made


def databases_named(prefix: str) -> list[str]:
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        return [
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,)
            )
        ]
