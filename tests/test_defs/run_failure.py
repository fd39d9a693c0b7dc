"""Evaluate the run-failure alert sensor over a failed run, as the Dagster daemon would."""

from __future__ import annotations

from dagster import DagsterEventType, DagsterInstance, build_run_status_sensor_context

from pgvault_assets.defs.alerting import backup_failure_alert_sensor
from pgvault_assets.defs.resources import AlertsResource, VaultResource


def sense_run_failure(instance: DagsterInstance, run_id: str) -> bool:
    """Run `backup_failure_alert_sensor` for `run_id`'s failure; False if the run did not fail."""
    failure = next(
        (
            record.dagster_event
            for record in instance.all_logs(run_id)
            if record.dagster_event
            and record.dagster_event.event_type == DagsterEventType.RUN_FAILURE
        ),
        None,
    )
    if failure is None:
        return False
    backup_failure_alert_sensor(
        build_run_status_sensor_context(
            sensor_name="backup_failure_alert_sensor",
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(run_id),
            resources={"vault": VaultResource(), "alerts": AlertsResource()},
        ).for_run_failure()
    )
    return True
