"""The production instance (dagster.yaml) on real PostgreSQL, and the definitions validating."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from dagster import DagsterInstance, materialize
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

from pgvault_assets.defs.resources import resource_defs
from tests.test_defs.single import RETENTION_KEY, retention_state

REPO = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).with_name("dagster"))


def test_the_production_instance_stores_runs_in_postgres(
    local_env, make_database, monkeypatch, tmp_path
):
    monkeypatch.setenv("DAGSTER_PG_URL", make_database("dagster"))
    home = tmp_path / "production_home"  # compute logs land beside the config, not in the repo
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")

    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        # A killed run's pool slots come back, or the backup pool's one slot is lost for good.
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 300
        result = materialize([retention_state], instance=instance, resources=resource_defs())
        assert result.success
        assert instance.get_run_by_id(result.run_id) is not None
        assert instance.get_latest_materialization_event(RETENTION_KEY) is not None


def test_definitions_validate_against_the_workspace(local_env):
    result = subprocess.run(
        [DAGSTER, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All code locations passed validation" in result.stderr + result.stdout
