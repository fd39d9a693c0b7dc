"""One-call CLI runs for the recovery tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgvault_assets.cli import main
from tests.test_engine.helpers import DAY


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `pgvault ARGV` in-process; return (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def prove_on_staging(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "restore-from-backup", "--date", str(DAY), "--target", "staging")
    assert code == 0, err
    code, _, err = run(
        capsys, "check-database-integrity", "--database", "staging", "--date", str(DAY)
    )
    assert code == 0, err


def request_restore(capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code, out, err = run(
        capsys,
        "request-restore",
        *("--date", str(DAY), "--target", "production", "--reason", "orders corrupted"),
        *extra,
    )
    assert code == 0, err
    return out.split()[0]


def approve(capsys: pytest.CaptureFixture[str], request_id: str, key: Path) -> tuple[int, str]:
    code, _, err = run(capsys, "approve-restore", request_id, "--key", str(key))
    return code, err


def approved_request(
    capsys: pytest.CaptureFixture[str], *keys: Path, scope: tuple[str, ...] = ()
) -> str:
    """A production request after a staging restore that passed its integrity check, approved
    with each of `keys`; `scope` adds to the request's arguments."""
    prove_on_staging(capsys)
    request_id = request_restore(capsys, *scope)
    for key in keys:
        code, err = approve(capsys, request_id, key)
        assert code == 0, err
    return request_id
