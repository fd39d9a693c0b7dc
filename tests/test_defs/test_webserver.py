"""End to end: the Dagster webserver launches yesterday's backup through GraphQL, as the UI does."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
WEBSERVER = str(Path(sys.executable).with_name("dagster-webserver"))

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
STATUS = """
query Status($runId: ID!) {
  runOrError(runId: $runId) { ... on Run { status } }
}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(base: str, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        f"{base}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body["errors"]
    return body["data"]


def _wait_until_up(base: str, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "dagster-webserver exited early"
        try:
            with urllib.request.urlopen(f"{base}/server_info", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise AssertionError("dagster-webserver did not come up")


@contextlib.contextmanager
def running_webserver() -> Iterator[str]:
    """dagster-webserver on the repository's workspace, on a free loopback port, in this
    test's environment; yields its base URL and stops it afterwards."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [WEBSERVER, "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_up(base, process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# dagster-webserver and its code server do not start under time-machine's shifted clock.
@pytest.mark.external_clock
def test_the_ui_launches_yesterdays_backup_and_it_succeeds(backup_env, local_env, yesterday):
    home = Path(os.environ["DAGSTER_HOME"])
    # Runs start at once instead of waiting in a queue for a daemon this test does not start.
    (home / "dagster.yaml").write_text(
        "run_coordinator:\n"
        "  module: dagster._core.run_coordinator\n"
        "  class: DefaultRunCoordinator\n"
        "telemetry:\n  enabled: false\n"
    )
    with running_webserver() as base:
        launched = _graphql(
            base,
            LAUNCH,
            {
                "params": {
                    "selector": {
                        "repositoryLocationName": "pgvault",
                        "repositoryName": "__repository__",
                        "jobName": "__ASSET_JOB",
                        "assetSelection": [{"path": ["database_backup"]}],
                    },
                    "executionMetadata": {
                        "tags": [{"key": "dagster/partition", "value": yesterday.isoformat()}]
                    },
                    "mode": "default",
                }
            },
        )["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]

        status = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            status = _graphql(base, STATUS, {"runId": run_id})["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(1)
        assert status == "SUCCESS"
        manifest = Vault.from_settings(load_settings()).read_manifest(yesterday)
        assert manifest.database == backup_env.rsplit("/", 1)[1]
