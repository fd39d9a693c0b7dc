"""A quick CLI: commands import only what they use.

Every `pgvault` command builds the whole parser, so what the parser imports every command
pays for; Dagster, boto3, psycopg and the Encryption SDK cost most of a second together.
`--help` and `list-backups` on the embedded default store need none of them. Timings are the
benchmark's (bench/bench_cli.py); these tests hold the structure that makes them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_engine.helpers import DAY, back_up

HEAVY = ("dagster", "boto3", "psycopg", "aws_encryption_sdk")

# Runs `pgvault ARGV...` in a fresh interpreter, then writes which heavy packages it loaded to
# REPORT: apart from the command's own output, which is not what is checked.
RUNNER = f"""
import json, sys
from pgvault_assets.cli import main
report, argv = sys.argv[1], sys.argv[2:]
try:
    code = main(argv)
except SystemExit as exc:
    code = exc.code
with open(report, "w") as out:
    json.dump({{"code": code, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}, out)
"""


def loaded_by(tmp_path: Path, *argv: str) -> tuple[int, list[str], str]:
    """The exit status of `pgvault ARGV...` in a new process, the heavy packages it loaded,
    and its stdout."""
    report = tmp_path / "loaded.json"
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(report), *argv], capture_output=True, text=True
    )
    assert "Traceback" not in result.stderr, result.stderr
    found = json.loads(report.read_text())
    return found["code"], found["loaded"], result.stdout


def test_help_loads_no_dagster_boto3_psycopg_or_encryption_sdk(tmp_path, local_env):
    code, loaded, out = loaded_by(tmp_path, "--help")
    assert code == 0 and "list-backups" in out
    assert loaded == []


@pytest.mark.parametrize("command", ["backup", "restore-from-backup", "recover-rows", "pitr"])
def test_a_command_help_loads_none_of_them_either(tmp_path, local_env, command):
    code, loaded, out = loaded_by(tmp_path, command, "--help")
    assert code == 0 and "usage: pgvault" in out
    assert loaded == []


def test_list_backups_on_the_local_store_loads_none_of_them(tmp_path, local_env, make_database):
    manifest = back_up(make_database())
    code, loaded, out = loaded_by(tmp_path, "list-backups")
    assert code == 0 and DAY.isoformat() in out and manifest.sha256[:12] in out
    assert loaded == []


def test_a_command_that_needs_them_still_loads_them(tmp_path, local_env, make_database):
    """The runner sees what a command loads: verify-backup decrypts, so it loads the SDK."""
    back_up(make_database())
    code, loaded, _ = loaded_by(tmp_path, "verify-backup", "--date", DAY.isoformat())
    assert code == 0
    assert "aws_encryption_sdk" in loaded and "dagster" not in loaded
