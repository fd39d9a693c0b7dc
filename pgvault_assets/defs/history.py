"""Failed backup runs as the Dagster instance remembers them.

A failed backup leaves no manifest, so the store alone cannot count failures; the run history
can. Runs are matched by the backup asset in their selection, not by job name, so backups
launched from the UI, a backfill or the CLI all count; and by their `pgvault/environment` and
`pgvault/database` tags, since environments may share one Dagster instance and each counts
only its own. A run without them (from before the tags, or one that died before its backup
step when nothing launched it tagged) cannot be attributed to an environment and counts for
none. Only FAILURE counts: a CANCELED run (an operator's Ctrl-C) failed no backup.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    RunsFilter,
)

from pgvault_assets.engine.monitoring.report import FailedRun
from pgvault_assets.fleet import SINGLE

PARTITION_TAG = "dagster/partition"
ENVIRONMENT_TAG = "pgvault/environment"
DATABASE_TAG = "pgvault/database"
REFUSED_METADATA_KEY = "backup_refused"


def backup_run_tags(environment: str, database: str | None) -> dict[str, str]:
    """Whose backup a run is: `database` None is the single database of `DATABASE_URL`, the
    fleet of one's `default`."""
    return {ENVIRONMENT_TAG: environment, DATABASE_TAG: database or SINGLE}


def of_another_environment(run: DagsterRun, environment: str) -> bool:
    """Whether `run` is tagged as another environment's, one sharing this instance: its
    failures and backups are not this one's to alert. An untagged run may be ours."""
    return run.tags.get(ENVIRONMENT_TAG, environment) != environment


def is_backup_run(instance: DagsterInstance, run: DagsterRun, key: AssetKey) -> bool:
    """Did `run` set out to materialize `key`? Runs of a whole job carry no asset selection."""
    return key in backup_keys_of_run(instance, run, {key})


def may_concern(run: DagsterRun, keys: Collection[AssetKey]) -> bool:
    """Whether `run` may have backed up or checked one of `keys`, from its selection alone,
    so a sensor or a scrape reads the events of no other run; a run of a whole job (which
    Dagster records as no selection or an empty one) may have."""
    if not run.asset_selection and not run.asset_check_selection:
        return True
    checked = {check.asset_key for check in run.asset_check_selection or ()}
    return bool((set(run.asset_selection or ()) | checked) & set(keys))


def backup_keys_of_run(
    instance: DagsterInstance,
    run: DagsterRun,
    keys: Collection[AssetKey],
    events: Sequence[DagsterEvent] | None = None,
) -> set[AssetKey]:
    """Which of `keys` `run` set out to materialize: its asset selection, or for a run of a
    whole job (which carries none) the materializations it planned, read from `events` when
    the caller has the run's events already."""
    if run.asset_selection:
        return set(run.asset_selection) & set(keys)
    planned = DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    if events is None:
        events = run_events(instance, run.run_id, planned)
    return {e.asset_key for e in events if e.event_type == planned and e.asset_key} & set(keys)


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
    """The last step failure's own description, else its error message, as one line; for a
    run that failed with no step failing (run monitoring stopped it for its runtime, its
    worker died, it never started), the run's own failure message.

    None when the backup step refused its date: a refused backfill took no backup and failed
    none, so it counts neither way.
    """
    events = run_events(
        instance, run_id, {DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
    )
    for event in reversed(events):
        data = event.step_failure_data if event.is_step_failure else None
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
    for event in reversed(events):
        if event.event_type == DagsterEventType.RUN_FAILURE and event.message:
            return f"the run failed before its backup step ended: {' '.join(event.message.split())}"
    return "the run failed before its backup step (see the run in Dagster)"


def counted_failure(run: DagsterRun, environment: str) -> tuple[str, date] | None:
    """Whose success rate a failed run counts in, and for which day: its database and its
    partition's day, when it is tagged as `environment`'s and dated; None, it counts for none."""
    database = run.tags.get(DATABASE_TAG)
    if run.tags.get(ENVIRONMENT_TAG) != environment or database is None:
        return None
    try:
        return database, date.fromisoformat(run.tags.get(PARTITION_TAG, ""))
    except ValueError:
        return None


OUTCOME_EVENTS = {
    DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
    DagsterEventType.ASSET_MATERIALIZATION,
    DagsterEventType.ASSET_CHECK_EVALUATION,
}


@dataclass(frozen=True)
class RunOutcome:
    """What one finished run did to the backups of `keys`, its events read once: the alert
    sensor alerts it, the run-history metrics keep its episodes."""

    day: str
    """The run's partition, `?` for a run without one."""
    failed: bool
    backups: tuple[str, ...]
    """The databases whose backup the run set out to take, by name."""
    reason: str | None
    """Why a failed run failed; None for a success and for a refused backfill, which
    attempted nothing and broke nothing."""
    checks: tuple[tuple[str, AssetCheckEvaluation], ...]
    """Each check the run evaluated of a backup of `keys`, with its database."""
    materialized: tuple[str, ...]
    """The databases whose backup the run took."""


def run_outcome(
    instance: DagsterInstance, run: DagsterRun, keys: Mapping[AssetKey, str], failed: bool
) -> RunOutcome:
    """The outcome of `run` for the backups of `keys` (each mapped to its database's name)."""
    events = run_events(instance, run.run_id, OUTCOME_EVENTS)
    backups = sorted(keys[key] for key in backup_keys_of_run(instance, run, keys, events))
    checks = []
    materialized = []
    for event in events:
        data, key = event.event_specific_data, event.asset_key
        if isinstance(data, AssetCheckEvaluation) and data.asset_key in keys:
            checks.append((keys[data.asset_key], data))
        elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION and key in keys:
            assert key is not None
            materialized.append(keys[key])
    return RunOutcome(
        day=run.tags.get(PARTITION_TAG, "?"),
        failed=failed,
        backups=tuple(backups),
        reason=failure_reason(instance, run.run_id) if failed and backups else None,
        checks=tuple(checks),
        materialized=tuple(materialized),
    )


def failed_backup_runs(
    instance: DagsterInstance,
    key: AssetKey,
    since: datetime,
    *,
    environment: str,
    database: str | None,
) -> list[FailedRun]:
    """The failed runs since `since` of the backup asset `key` of `database` (None: the single
    database) in `environment`."""
    return failed_runs_by_key(instance, {key: database or SINGLE}, since, environment)[key]


def failed_runs_by_key(
    instance: DagsterInstance,
    keys: Mapping[AssetKey, str],
    since: datetime,
    environment: str,
) -> dict[AssetKey, list[FailedRun]]:
    """The failed backup runs since `since` of each of `keys` (each backup asset mapped to its
    database's name) in `environment`, from one read of the run history: a fleet of hundreds
    must not query it once per database."""
    records = instance.get_run_records(
        filters=RunsFilter(
            statuses=[DagsterRunStatus.FAILURE],
            created_after=since,
            tags={ENVIRONMENT_TAG: environment},
        )
    )
    failures: dict[AssetKey, list[FailedRun]] = {key: [] for key in keys}
    for run in (record.dagster_run for record in records):
        counted = counted_failure(run, environment)
        if counted is None:
            continue
        database, day = counted
        own = [key for key, name in keys.items() if name == database]
        backed_up = backup_keys_of_run(instance, run, own) if own else set()
        if not backed_up:
            continue
        reason = failure_reason(instance, run.run_id)
        if reason is None:
            continue
        for key in backed_up:
            failures[key].append(FailedRun(day, reason))
    return failures
