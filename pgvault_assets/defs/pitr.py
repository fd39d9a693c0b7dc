"""Point-in-time recovery in Dagster, per server (pgBackRest archives a server in one stanza):
base backups on their own schedules, their proof, one sensor watching every WAL archive.

Nothing of a server runs until `pgvault pitr init` wrote its configuration: its schedules
start stopped when the location loads without it, and skip, saying so, if it goes away.
"""

import dataclasses
import json
import os
from collections.abc import Callable

import dagster as dg

from pgvault_assets.defs.backup import Build
from pgvault_assets.defs.naming import ServerNames
from pgvault_assets.defs.resources import AlertsResource, VaultResource
from pgvault_assets.engine.basics import names
from pgvault_assets.engine.pitr.archive import (
    archive_alert_step,
    pitr_status,
    take_base_backup,
    tool_for,
)
from pgvault_assets.engine.pitr.recover import prove_restorable
from pgvault_assets.engine.postgres.cluster import one_proof_at_a_time
from pgvault_assets.errors import PgvaultError
from pgvault_assets.fleet import RESTORE_PROOF_POOL, pin_database
from pgvault_assets.settings import Settings, load_settings

NOT_SET_UP = "point-in-time recovery is not set up; run pgvault pitr init"


class BaseBackupConfig(dg.Config):
    kind: str = "diff"
    """full (weekly), diff (daily) or incr."""


def make_base_backup(server: ServerNames) -> dg.AssetsDefinition:
    @dg.asset(
        key=server.base_backup,
        group_name="pitr",
        description=(
            "A pgBackRest base backup of the server (full weekly, differential daily): with the "
            "archived WAL after it, the start of every point-in-time recovery of its databases."
        ),
    )
    def base_backup(
        context: dg.AssetExecutionContext, config: BaseBackupConfig, vault: VaultResource
    ) -> dg.MaterializeResult:
        try:
            backup = take_base_backup(
                vault.settings(server.pinned),
                config.kind,
                annotations={"dagster_run_id": context.run_id},
            )
        except PgvaultError as exc:
            raise dg.Failure(description=str(exc)) from None
        return dg.MaterializeResult(
            metadata={
                "label": backup.label,
                "type": backup.kind,
                "wal_start": backup.wal_start,
                "wal_stop": backup.wal_stop,
                "size_bytes": backup.size_bytes,
                "repository_size_bytes": backup.repository_size_bytes,
                "duration_seconds": (backup.stopped_at - backup.started_at).total_seconds(),
            }
        )

    return base_backup


def make_pitr_restorable(server: ServerNames) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=server.base_backup,
        name="pitr_restorable",
        pool=RESTORE_PROOF_POOL,
        description=(
            "a base backup chosen at random, restored by pgBackRest into a throwaway cluster and "
            "replayed through the whole archive after it; every table of a database of the "
            "server read there. replay_seconds is the measured RTO of a point-in-time recovery"
        ),
    )
    def pitr_restorable(vault: VaultResource) -> dg.AssetCheckResult:
        try:
            settings = vault.settings(server.pinned)
            with one_proof_at_a_time():
                proof = prove_restorable(tool_for(settings), settings.require_database())
        except PgvaultError as exc:
            return dg.AssetCheckResult(
                passed=False, severity=dg.AssetCheckSeverity.WARN, description=str(exc)
            )
        return dg.AssetCheckResult(
            passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "base_backup": proof.base_backup,
                "recovered_to": proof.recovered_to,
                "replay_seconds": float(proof.replay_seconds),
                "tables": len(proof.table_rows),
                "row_total": sum(proof.table_rows.values()),
            },
        )

    return pitr_restorable


def _set_up(settings: Settings) -> bool:
    return names.pitr_stanza(settings).config_file.exists()


def _requests(server: ServerNames, kind: str) -> Callable[..., dg.RunRequest | dg.SkipReason]:
    op = server.base_backup.to_python_identifier()

    def evaluate(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        if not _set_up(context.resources.vault.settings(server.pinned)):
            return dg.SkipReason(f"{server.said}{NOT_SET_UP}")
        return dg.RunRequest(
            run_config={"ops": {op: {"config": {"kind": kind}}}},
            tags={"pgvault/base_backup": kind},
        )

    return evaluate


def _server_cursors(cursor: str | None, servers: tuple[ServerNames, ...]) -> dict[str, str]:
    """Each server's episode cursor; a cursor of one server alone (before each server had its
    stanza) is the first server's."""
    saved = json.loads(cursor) if cursor else {"servers": {}}
    if isinstance(saved, dict) and "servers" in saved:
        return dict(saved["servers"])
    return {servers[0].server: cursor or ""}


def _watch_server(
    server: ServerNames, vault: VaultResource, alerts: AlertsResource, cursor: str | None
) -> tuple[str, str | None]:
    """What one server's archive says this tick, and its cursor after it."""
    try:
        settings = vault.settings(server.pinned)
    except PgvaultError as exc:
        return f"{server.said}{exc}", cursor
    if not _set_up(settings):
        return f"{server.said}{NOT_SET_UP}", cursor
    try:
        problems = pitr_status(settings).problems(settings.pitr.max_lag)
    except PgvaultError as exc:  # the server itself is unreachable: an episode of its own
        problems = [("pitr_status_unreadable", f"the WAL archive's state cannot be read: {exc}")]
    sent, cursor = archive_alert_step(problems, cursor)
    if sent:
        notifier = alerts.notifier(settings)
        for alert in sent:
            notifier.send(dataclasses.replace(alert, message=f"{server.said}{alert.message}"))
    said = "; ".join(message for _, message in problems) or "archiving is healthy"
    return f"{server.said}{said}", cursor


def make_archive_sensor(build: Build, running: bool) -> dg.SensorDefinition:
    servers = build.names.servers

    def watch_archive(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        cursors, said = _server_cursors(context.cursor, servers), []
        for server in servers:
            resources, cursor = context.resources, cursors.get(server.server)
            text, cursor = _watch_server(server, resources.vault, resources.alerts, cursor)
            said.append(text)
            cursors |= {server.server: cursor} if cursor else {}
        context.update_cursor(json.dumps({"servers": cursors}))
        return dg.SkipReason("; ".join(said))

    return dg.SensorDefinition(
        name="pitr_archive_sensor",
        evaluation_fn=watch_archive,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING
        if running
        else dg.DefaultSensorStatus.STOPPED,
        required_resource_keys={"vault", "alerts"},
        description=(
            "Watches each server's WAL archive (pg_stat_archiver, the .ready backlog, the "
            "repository's segments): alerts once per episode of lag past PITR_MAX_LAG_MINUTES, "
            "failing archiving, or a gap."
        ),
    )


def _running(server: ServerNames) -> bool:
    """Whether `pitr init` has run for the server as the location loads (a bad setting, or
    its server's URL unset, counts as not, and is said by the commands that use it)."""
    try:
        return _set_up(pin_database(load_settings(), os.environ, server.pinned))
    except PgvaultError:
        return False


SCHEDULES = {
    "full": ("30 1 * * 0", "Sunday 01:30 UTC: a full base backup."),
    "diff": ("30 1 * * 1-6", "Monday to Saturday 01:30 UTC: a differential base backup."),
}


def pitr_defs(build: Build) -> dg.Definitions:
    """Per server of the fleet: its base backups, their proof and their schedules, started
    only where `pitr init` has run as the location loads; one sensor watches them all."""
    servers = build.names.servers
    running = [_running(server) for server in servers]
    jobs = [
        dg.define_asset_job(
            server.job,
            selection=[server.base_backup],
            description="One pgBackRest base backup; its type comes from the run config.",
        )
        for server in servers
    ]
    return dg.Definitions(
        assets=[make_base_backup(server) for server in servers],
        asset_checks=[make_pitr_restorable(server) for server in servers],
        jobs=jobs,
        schedules=[
            dg.ScheduleDefinition(
                name=server.schedule(kind),
                job=job,
                cron_schedule=cron,
                execution_timezone="UTC",
                default_status=dg.DefaultScheduleStatus.RUNNING
                if on
                else dg.DefaultScheduleStatus.STOPPED,
                execution_fn=_requests(server, kind),
                required_resource_keys={"vault"},
                description=description,
            )
            for server, job, on in zip(servers, jobs, running, strict=True)
            for kind, (cron, description) in SCHEDULES.items()
        ],
        sensors=[make_archive_sensor(build, any(running))],
    )
