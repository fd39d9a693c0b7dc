"""What a newcomer sees first: the quickstart's instance and its UI, asked through the
webserver's GraphQL API (what the UI itself reads), and the CLI's small words."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import psycopg
import pytest
import yaml
from dagster import DagsterInstance

from pgvault_assets.cli import main
from pgvault_assets.cli.console import ago
from pgvault_assets.cli.platform import CODE_LOCATION
from pgvault_assets.defs.backup import partitions_start
from pgvault_assets.engine.basics.clock import latest_complete_day, utcnow
from pgvault_assets.engine.storage.store.local import LocalStore
from pgvault_assets.settings import DatabaseUrl, PlatformSettings
from tests.test_defs.test_webserver import REPO, _graphql, running_webserver

PGVAULT = str(Path(sys.executable).with_name("pgvault"))
NOW = utcnow()  # one clock for the test run: the day the CLI backs up is this one's yesterday

FIRST_LOOK = """
query FirstLook {
  shouldShowNux
  assetNodeOrError(assetKey: {path: ["database_backup"]}) {
    ... on AssetNode { partitionStats { numMaterialized numPartitions numFailed } }
  }
  repositoryOrError(
    repositorySelector: {repositoryLocationName: "pgvault", repositoryName: "__repository__"}
  ) {
    ... on Repository {
      pipelines { name }
      schedules { name scheduleState { status } }
      sensors { name sensorState { status } }
    }
  }
  runsOrError {
    ... on Runs {
      results { pipelineName startTime repositoryOrigin { repositoryLocationName repositoryName } }
    }
  }
}
"""


def timeline_rows(runs: list[dict]) -> set[tuple[str, str, str]]:
    """The rows the Overview timeline draws for `runs`, as Dagster's UI builds them
    (ui-core's useRunsForTimeline): one per job of a code location; a run that has not
    started, or carries no code location (repositoryOrigin), is left out."""
    return {
        (
            run["repositoryOrigin"]["repositoryLocationName"],
            run["repositoryOrigin"]["repositoryName"],
            run["pipelineName"],
        )
        for run in runs
        if run["startTime"] is not None and run["repositoryOrigin"] is not None
    }


def _quickstart_instance(home: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "quickstart_instance.py"),
            str(REPO / "dagster.yaml"),
            str(home / "dagster.yaml"),
        ],
        check=True,
    )


def test_the_quickstart_instance_is_the_repositorys_without_its_postgres_storage(local_env):
    home = Path(os.environ["DAGSTER_HOME"])
    (home / "dagster.yaml").touch()  # what earlier quickstarts left: replaced
    _quickstart_instance(home)
    written = yaml.safe_load((home / "dagster.yaml").read_text())
    repository = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert "storage" not in written
    assert written == {k: v for k, v in repository.items() if k != "storage"}
    assert written["telemetry"] == {"enabled": False} and written["nux"] == {"enabled": False}


def test_an_instance_file_the_operator_wrote_is_left_alone(local_env):
    home = Path(os.environ["DAGSTER_HOME"])
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")
    _quickstart_instance(home)
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: true\n"


def test_partitions_start_at_the_environments_first_backup(local_env, monkeypatch):
    store = LocalStore(local_env / "store")
    config = PlatformSettings()
    now = NOW
    # Before any backup: the one day a first backup can take, so nothing shows as missing.
    assert partitions_start(config, now) == latest_complete_day(now)
    # The oldest manifest anywhere in the environment, a fleet database's included.
    store.put_bytes("test/2026-03-04/manifest.json", b"{}")
    store.put_bytes("test/analytics/2026-02-10/manifest.json", b"{}")
    store.put_bytes("other/2025-01-01/manifest.json", b"{}")  # another environment's
    assert partitions_start(config, now) == date(2026, 2, 10)
    # A start the operator sets wins.
    assert partitions_start(PlatformSettings(start_date=date(2024, 5, 1)), now) == date(2024, 5, 1)


def test_an_unreadable_configuration_starts_partitions_at_the_latest_complete_day(
    local_env, monkeypatch
):
    monkeypatch.setenv("BACKUP_COMPRESSION_LEVEL", "eleven")
    assert partitions_start(PlatformSettings(), NOW) == latest_complete_day(NOW)


def test_loading_the_definitions_prints_no_preview_or_supersession_warning(local_env):
    loaded = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import pgvault_assets.definitions"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "PreviewWarning" not in loaded.stderr
    assert "SupersessionWarning" not in loaded.stderr


def test_a_closed_pipe_ends_list_backups_quietly(local_env):
    reader = subprocess.Popen(
        [PGVAULT, "list-backups", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    reader.stdout.close()  # `| head` that has already gone before the first line
    stderr = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 141
    assert stderr == ""


def test_an_ipv6_host_keeps_its_brackets_when_shown():
    url = DatabaseUrl("postgresql://app:secret@[::1]:5433/orders")
    assert url.redacted == "postgresql://app@[::1]:5433/orders"


@pytest.fixture
def demo_like(make_database) -> str:
    url = make_database("firstlook")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
        conn.execute("INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 100) g")
    return url


# dagster-webserver and its code server do not start under time-machine's shifted clock.
@pytest.mark.external_clock
def test_the_quickstarts_ui_shows_its_own_history_and_runs_only_what_is_set_up(
    local_env, demo_like, monkeypatch
):
    monkeypatch.delenv("BACKUP_START_DATE", raising=False)
    monkeypatch.setenv("DATABASE_URL", demo_like)
    home = Path(os.environ["DAGSTER_HOME"])
    _quickstart_instance(home)
    backed_up = subprocess.run([PGVAULT, "backup"], capture_output=True, text=True, check=False)
    assert backed_up.returncode == 0, backed_up.stderr
    assert f"backup {latest_complete_day(utcnow()).isoformat()} stored" in backed_up.stdout

    with running_webserver() as base:
        seen = _graphql(base, FIRST_LOOK, {})

    assert seen["shouldShowNux"] is False
    # One backup, one partition: 100% filled, nothing missing before it.
    assert seen["assetNodeOrError"]["partitionStats"] == {
        "numMaterialized": 1,
        "numPartitions": 1,
        "numFailed": 0,
    }
    repository = seen["repositoryOrError"]
    schedules = {s["name"]: s["scheduleState"]["status"] for s in repository["schedules"]}
    sensors = {s["name"]: s["sensorState"]["status"] for s in repository["sensors"]}
    assert schedules["daily_backup_schedule"] == "RUNNING"
    # Point-in-time recovery is not set up (no `pgvault pitr init`): nothing of it runs.
    assert schedules["pitr_full_backup_schedule"] == "STOPPED"
    assert schedules["pitr_diff_backup_schedule"] == "STOPPED"
    assert sensors["pitr_archive_sensor"] == "STOPPED"
    assert {name for name, status in sensors.items() if status == "RUNNING"} >= {
        "backup_alert_sensor"
    }
    # The CLI's backup is on the Overview timeline, in the row of the scheduled job's.
    assert timeline_rows(seen["runsOrError"]["results"]) == {
        ("pgvault", "__repository__", "daily_backup_job")
    }
    assert "daily_backup_job" in {job["name"] for job in repository["pipelines"]}


@pytest.mark.parametrize(
    ("hours", "said"),
    [(0.2, "12 min ago"), (5.4, "5 h ago"), (47.4, "47 h ago"), (72.0, "3.0 d ago")],
)
def test_a_backups_age_is_said_in_the_unit_a_person_would_use(hours, said):
    assert ago(hours) == said


def test_a_cli_backup_run_is_named_and_tagged_with_its_environment_and_database(
    local_env, demo_like, monkeypatch, capsys
):
    monkeypatch.setenv("DATABASE_URL", demo_like)
    assert main(["backup", "--retries", "0"]) == 0
    with DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
    assert run.job_name == "daily_backup_job"
    # The code location's run, as the UI's Overview timeline needs it to list the run at all.
    assert run.remote_job_origin.location_name == CODE_LOCATION
    assert run.remote_job_origin.repository_origin.repository_name == "__repository__"
    # ... and which the daemon's run retries leave alone: the CLI retries with --retries.
    assert run.tags["dagster/max_retries"] == "0"
    assert run.tags["pgvault/environment"] == "test"
    assert run.tags["pgvault/database"] == "default"


def test_the_cli_names_the_code_location_the_workspace_loads():
    (entry,) = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"]
    assert entry["python_module"]["location_name"] == CODE_LOCATION
