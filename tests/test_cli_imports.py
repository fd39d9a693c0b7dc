"""A quick CLI: commands import only what they use.

Every `pgvault` command builds the whole parser, so what the parser imports every command
pays for; Dagster, boto3, psycopg, the Encryption SDK and prometheus_client cost most of a
second together. `--help` and `list-backups` on the embedded default store need none of them. A command that
runs imports what its run uses, no more: a backup without Sentry or PagerDuty set loads
neither client, a restore of a dump loads nothing of point-in-time recovery. Timings are the
benchmark's (bench/bench_cli.py); these tests hold the structure that makes them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_engine.helpers import DAY, back_up

HEAVY = ("dagster", "boto3", "psycopg", "aws_encryption_sdk", "prometheus_client")
ALERT_CLIENTS = ("sentry_sdk", "pagerduty")
PITR = "pgvault_assets.engine.pitr."  # its modules; the package itself only names backup kinds

# Runs `pgvault ARGV...` in a fresh interpreter, then writes every module it loaded to
# REPORT: apart from the command's own output, which is not what is checked.
RUNNER = """
import json, sys
from pgvault_assets.cli import main
report, argv = sys.argv[1], sys.argv[2:]
try:
    code = main(argv)
except SystemExit as exc:
    code = exc.code
with open(report, "w") as out:
    json.dump({"code": code, "modules": sorted(sys.modules)}, out)
"""


def modules_of(tmp_path: Path, *argv: str) -> tuple[int, set[str], str]:
    """The exit status of `pgvault ARGV...` in a new process, every module it loaded, and its
    stdout."""
    report = tmp_path / "loaded.json"
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(report), *argv], capture_output=True, text=True
    )
    assert "Traceback" not in result.stderr, result.stderr
    found = json.loads(report.read_text())
    return found["code"], set(found["modules"]), result.stdout


def loaded_by(tmp_path: Path, *argv: str) -> tuple[int, list[str], str]:
    """The exit status of `pgvault ARGV...` in a new process, the heavy packages it loaded,
    and its stdout."""
    code, modules, out = modules_of(tmp_path, *argv)
    return code, [m for m in HEAVY if m in modules], out


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


def test_a_backup_without_sentry_or_pagerduty_loads_neither_client(
    tmp_path, local_env, make_database, monkeypatch
):
    monkeypatch.setenv("DATABASE_URL", make_database())
    for name in ("SENTRY_DSN", "PAGERDUTY_ROUTING_KEY"):
        monkeypatch.delenv(name, raising=False)
    code, modules, out = modules_of(tmp_path, "backup")
    assert code == 0 and "stored" in out
    assert "dagster" in modules  # the backup ran as a Dagster run, with its notifier
    assert [m for m in ALERT_CLIENTS if m in modules] == []


def test_a_backup_with_sentry_set_still_loads_it(tmp_path, local_env, make_database, monkeypatch):
    """The runner sees the client where it is used: a DSN set starts Sentry for the run (its
    check-ins). Nothing listens at the DSN's port; the client gives up quietly."""
    monkeypatch.setenv("DATABASE_URL", make_database())
    monkeypatch.setenv("SENTRY_DSN", "http://public@127.0.0.1:9/1")
    code, modules, _ = modules_of(tmp_path, "backup")
    assert code == 0
    assert "sentry_sdk" in modules


def test_a_restore_of_a_dump_loads_nothing_of_point_in_time_recovery(
    tmp_path, local_env, make_database, monkeypatch
):
    back_up(make_database())
    monkeypatch.setenv("STAGING_DATABASE_URL", make_database("staging"))
    argv = ("restore-from-backup", "--date", DAY.isoformat(), "--target", "staging")
    code, modules, out = modules_of(tmp_path, *argv)
    assert code == 0 and "restored backup" in out
    assert "pgvault_assets.engine.restore.restore" in modules  # it restored, here
    assert sorted(m for m in modules if m.startswith(PITR)) == []


def printed_last(script: str) -> list:
    """What a fresh interpreter running `script` printed last, as JSON."""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_the_console_script_collects_garbage_less_often_than_python_does(tmp_path, local_env):
    """A command's modules live as long as its process: the console script does not have the
    collector walk them every 700 allocations while they load. Called as a library (the
    tests, the code location), the process's own thresholds stay."""
    script = (
        "import gc, json, sys\n"
        "from pgvault_assets.cli import main\n"
        "python_s = gc.get_threshold()\n"
        "main(['list-backups'])\n"
        "as_library = gc.get_threshold()\n"
        "sys.argv = ['pgvault', 'list-backups']\n"
        "main()\n"
        "print(json.dumps([python_s, as_library, gc.get_threshold()]))\n"
    )
    python_s, as_library, console_script = printed_last(script)
    assert as_library == python_s
    assert console_script[0] >= 10 * python_s[0]


def test_a_backup_loads_dagster_without_the_collector_walking_it(
    tmp_path, local_env, make_database, monkeypatch
):
    """The console script's backup: while the CLI, Dagster, the definitions and the instance
    load, no collection runs; what loaded is then frozen out of the collector's reach, which keeps
    collecting what the run itself leaves (a dozen collections, not the ~120 of walking
    the modules as they arrive)."""
    monkeypatch.setenv("DATABASE_URL", make_database())
    script = (
        "import gc, json, sys\n"
        "seen = []\n"
        "gc.callbacks.append(lambda phase, info: phase == 'start' and seen.append(phase))\n"
        "from pgvault_assets.__main__ import run\n"
        "sys.argv = ['pgvault', 'backup']\n"
        "code = run()\n"
        "print(json.dumps([code, len(seen), gc.get_freeze_count()]))\n"
    )
    code, collections, frozen = printed_last(script)
    assert code == 0
    assert frozen > 200_000  # the CLI, Dagster and the definitions, out of its reach
    assert collections < 15
