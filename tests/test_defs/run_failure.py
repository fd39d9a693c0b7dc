"""Evaluate the alert sensor over runs that ended, as the Dagster daemon would."""

from __future__ import annotations

from dagster import DagsterEventType, DagsterInstance, build_sensor_context
from dagster._core.event_api import EventLogCursor

from pgvault_assets.defs.alerting import (
    RUN_END_EVENTS,
    DatabaseState,
    FleetCursor,
    make_alert_sensor,
)
from pgvault_assets.defs.resources import AlertsResource, VaultResource
from pgvault_assets.engine.basics.clock import utcnow
from pgvault_assets.fleet import SINGLE, single_fleet


def sense_from_start(instance: DagsterInstance) -> str | None:
    """One tick of the single database's alert sensor from a cursor that has read no run yet
    and has done its hourly pass: the alerts of the runs that ended so far, alone. Returns the
    cursor after it."""
    start = EventLogCursor.from_storage_id(0).to_string()
    now = utcnow()
    cursor = FleetCursor(
        runs={event_type.value: start for event_type in RUN_END_EVENTS},
        databases={SINGLE: DatabaseState(newest=None, since=now)},
        health_at=now,
    )
    context = build_sensor_context(
        instance=instance,
        cursor=cursor.dump(),
        resources={"vault": VaultResource(), "alerts": AlertsResource()},
    )
    make_alert_sensor(single_fleet()).evaluate_tick(context)
    return context.cursor


def sense_run_failure(instance: DagsterInstance, run_id: str) -> bool:
    """Let the alert sensor see `run_id`'s failure; False if the run did not fail."""
    failed = any(
        record.dagster_event and record.dagster_event.event_type == DagsterEventType.RUN_FAILURE
        for record in instance.all_logs(run_id)
    )
    if failed:
        sense_from_start(instance)
    return failed
