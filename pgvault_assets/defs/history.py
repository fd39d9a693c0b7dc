"""Failed backup runs as the Dagster instance remembers them.

A failed backup leaves no manifest, so the store alone cannot count failures; the run history
can. Runs are matched by the backup asset in their selection, not by job name, so backups
launched from the UI, a backfill or the CLI all count.
"""

from __future__ import annotations

from datetime import date, datetime

from dagster import (
    AssetKey,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunsFilter,
)

from pgvault_assets.engine.report import FailedRun

PARTITION_TAG = "dagster/partition"
REFUSED_METADATA_KEY = "backup_refused"


def is_backup_run(instance: DagsterInstance, run: DagsterRun, key: AssetKey) -> bool:
    """Did `run` set out to materialize `key`? Runs of a whole job carry no asset selection."""
    if run.asset_selection:
        return key in run.asset_selection
    planned = run_events(instance, run.run_id, DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
    return any(event.asset_key == key for event in planned)


def run_events(
    instance: DagsterInstance,
    run_id: str,
    event_type: DagsterEventType | set[DagsterEventType],
) -> list[DagsterEvent]:
    """The Dagster events of `event_type` (one type or a set, read at once) in run `run_id`,
    oldest first.

    `DagsterInstance.all_logs` is not marked public in Dagster 1.13 (it is neither private nor
    deprecated), and no public method reads one run's events: `fetch_materializations`,
    `fetch_observations` and `fetch_run_status_changes` cover other event types, and
    `get_event_records` is deprecated and cannot select a run. Every per-run read goes here.
    """
    return [
        entry.dagster_event
        for entry in instance.all_logs(run_id, of_type=event_type)
        if entry.dagster_event is not None
    ]


def failure_reason(instance: DagsterInstance, run_id: str) -> str | None:
    """The last step failure's own description, else its error message, as one line.

    None when the backup step refused its date: a refused backfill took no backup and failed
    none, so it counts neither way.
    """
    for event in reversed(run_events(instance, run_id, DagsterEventType.STEP_FAILURE)):
        data = event.step_failure_data
        if data is None:
            continue
        if data.user_failure_data and REFUSED_METADATA_KEY in data.user_failure_data.metadata:
            return None
        if data.user_failure_data and data.user_failure_data.description:
            text = data.user_failure_data.description
        elif data.error:
            text = data.error.message
        else:
            continue
        return " ".join(text.split())
    return "the run failed before its backup step (see the run in Dagster)"


def failed_backup_runs(
    instance: DagsterInstance, key: AssetKey, since: datetime
) -> list[FailedRun]:
    records = instance.get_run_records(
        filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE], created_after=since)
    )
    failures = []
    for run in (record.dagster_run for record in records):
        partition = run.tags.get(PARTITION_TAG)
        if not partition or not is_backup_run(instance, run, key):
            continue
        try:
            day = date.fromisoformat(partition)
        except ValueError:
            continue
        reason = failure_reason(instance, run.run_id)
        if reason is not None:
            failures.append(FailedRun(day, reason))
    return failures
