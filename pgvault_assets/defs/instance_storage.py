"""Dagster's own storage, checked for `pgvault doctor`: kept apart from the Dagster-free engine.

Run history, schedules and sensor cursors live there; if it is unreachable, scheduled backups
do not run and `pgvault backup` cannot record its materialization.
"""

from __future__ import annotations

import os
from pathlib import Path

from pgvault_assets.engine.monitoring.doctor import Check, Status
from pgvault_assets.redact import redact
from pgvault_assets.settings import pgvault_home


def instance_storage_check() -> Check:
    name = "dagster instance"
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return Check(
            name,
            Status.WARN,
            "DAGSTER_HOME is not set: the CLI uses the embedded SQLite instance in "
            f"{pgvault_home() / 'dagster_home'}; set DAGSTER_HOME (with dagster.yaml) for a "
            "deployment",
        )
    if not Path(home).is_dir():
        return Check(
            name, Status.FAIL, f"DAGSTER_HOME {home} is not a folder; create it with dagster.yaml"
        )
    # Deferred on purpose: importing Dagster costs a second or two, and `doctor` may not need it.
    from dagster import DagsterInstance

    try:
        with DagsterInstance.get() as instance:
            storage = type(instance.run_storage).__name__.removesuffix("RunStorage").lower()
            runs = instance.get_runs_count()
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        return Check(
            name,
            Status.FAIL,
            redact(f"{home} cannot be opened ({reason}); check dagster.yaml and its storage"),
        )
    configured = "" if (Path(home) / "dagster.yaml").exists() else ", no dagster.yaml (defaults)"
    scope = "; one machine only" if storage == "sqlite" else ""
    return Check(
        name, Status.OK, f"{storage} storage in {home}, reachable ({runs} runs){configured}{scope}"
    )
