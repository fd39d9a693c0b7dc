"""The operators' entry points to restore: staging's restores are audited, production's are
authorized by two approvals first. Authorization decides and audit records; the restore
mechanism (engine/restore) knows nothing of either.

Recovery to a time (engine/pitr, and the copy out of its throwaway cluster) is imported by the
functions that recover to a time: a restore of a dump, the CLI's most common, does not load it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgvault_assets.engine.approvals import audit
from pgvault_assets.engine.approvals import authorization as auth
from pgvault_assets.engine.basics.clock import Clock, utcnow
from pgvault_assets.engine.basics.interrupts import said_as
from pgvault_assets.engine.postgres.postgres import (
    previous_databases,
)
from pgvault_assets.engine.restore.restore import RestoreResult, restore_backup
from pgvault_assets.engine.restore.swap import rollback_restore
from pgvault_assets.engine.vault.pipeline import Progress
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.settings import DatabaseUrl

if TYPE_CHECKING:
    from pgvault_assets.engine.pitr.runner import PgBackRest
    from pgvault_assets.engine.restore.copy_in import CopyResult


def restore_staging(
    vault: Vault,
    day: date,
    url: DatabaseUrl,
    *,
    actor: str,
    full_verify: bool = False,
    progress: Progress | None = None,
    now: Clock = utcnow,
    version: str | None = None,
) -> RestoreResult:
    """Restore staging and record it, failed or not: production is checked against what it holds."""
    body = {"date": day.isoformat(), "sha256": None, "database": url.dbname}
    with audit.staging_operation(
        vault, audit.STAGING_RESTORE, body, actor=actor, now=now
    ) as learned:
        learned["sha256"] = vault.read_manifest(day, version).sha256
        result = restore_backup(
            vault, day, url, full_verify=full_verify, progress=progress, now=now, version=version
        )
        learned["sha256"] = result.manifest.sha256  # what was restored, even if re-run meanwhile
        return result


@dataclass(frozen=True)
class TimeRestoreResult:
    copy: CopyResult
    target_time: datetime
    base_backup: str
    stopped_at: str
    replay_seconds: float


def restore_staging_to_time(
    vault: Vault,
    tool: PgBackRest,
    target_time: datetime,
    url: DatabaseUrl,
    *,
    source: DatabaseUrl,
    actor: str,
    source_major: int | None = None,
    cluster_root: Path | None = None,
    now: Clock = utcnow,
) -> TimeRestoreResult:
    """Recover a throwaway cluster to `target_time`, then copy `source`'s database from it
    into staging by the checked swap, and record it, failed or not."""
    body = {"time": time_key(target_time), "database": url.dbname}
    with (
        said_as(
            f"restore of {url.dbname} to {time_key(target_time)} interrupted: the throwaway "
            f"cluster and the half-built database were removed; {url.dbname} is as it was"
        ),
        audit.staging_operation(
            vault, audit.STAGING_RESTORE_TO_TIME, body, actor=actor, now=now
        ) as learned,
    ):
        result = _copy_recovered(
            tool,
            target_time,
            source,
            url,
            source_major=source_major,
            cluster_root=cluster_root,
            now=now,
            learned=learned,
        )
        learned["previous"] = result.copy.previous
        return result


def _copy_recovered(
    tool: PgBackRest,
    target_time: datetime,
    source: DatabaseUrl,
    url: DatabaseUrl,
    *,
    source_major: int | None = None,
    cluster_root: Path | None = None,
    base_backup: str | None = None,
    now: Clock,
    learned: dict[str, Any] | None = None,
) -> TimeRestoreResult:
    """`source`'s database recovered to `target_time` in a throwaway cluster (removed whatever
    happens), copied into `url` by the checked swap: staging's restore and production's alike.
    `learned` gets the base backup and where replay stopped before the copy, so a failed
    copy's record says them too."""
    from pgvault_assets.engine.pitr.recover import recover_to_time, source_user
    from pgvault_assets.engine.restore.copy_in import copy_database

    with recover_to_time(
        tool,
        target_time,
        superuser=source_user(source),
        source_major=source_major,
        root=cluster_root,
        base_backup=base_backup,
    ) as recovered:
        if learned is not None:
            learned.update(base_backup=recovered.backup_label, stopped_at=recovered.stopped_at)
        copied = copy_database(recovered.database(source.dbname), url, now=now)
    return TimeRestoreResult(
        copied,
        target_time,
        recovered.backup_label,
        recovered.stopped_at,
        recovered.replay_seconds,
    )


def time_key(target_time: datetime) -> str:
    """How a recovery's time is written in the audit trail and in a request: UTC ISO 8601."""
    return target_time.astimezone(UTC).isoformat()


def restore_production_to_time(
    vault: Vault,
    tool: PgBackRest,
    request_id: str,
    target_time: datetime,
    target_url: DatabaseUrl,
    approvers_file: Path,
    *,
    source: DatabaseUrl,
    cluster_root: Path | None = None,
    now: Clock = utcnow,
    confirm: Callable[[str], None] | None = None,
) -> TimeRestoreResult:
    """Recover production to the time a dual-authorized `restore-to-time` request names, from
    the base backup it pins, once staging holds that same recovery; with the safe swap."""
    pinned = auth.authorize_pinned_time(
        vault, request_id, approvers_file, database=target_url.dbname, now=now
    )
    if pinned.time != time_key(target_time):
        raise auth.AuthorizationRefused(
            f"request {request_id} approved recovering to {pinned.time}, not "
            f"{time_key(target_time)}; nothing was restored"
        )
    if confirm is not None:
        confirm(target_url.dbname)
    return auth.run_authorized(
        vault,
        pinned.authorization,
        lambda: _copy_recovered(
            tool,
            target_time,
            source,
            target_url,
            cluster_root=cluster_root,
            base_backup=pinned.base_backup,
            now=now,
        ),
        lambda result: (
            f"recovered to {pinned.time} from {result.base_backup}; previous kept as "
            f"{result.copy.previous}"
        ),
        now=now,
    )


def rollback_staging(
    vault: Vault, url: DatabaseUrl, *, actor: str, now: Clock = utcnow
) -> tuple[str, str]:
    """Swap staging's kept database back in and record it: staging no longer holds the backup."""
    with audit.staging_operation(
        vault, audit.STAGING_ROLLBACK, {"database": url.dbname}, actor=actor, now=now
    ) as learned:
        swapped_in, kept_as = rollback_restore(url, now=now)
        learned.update(swapped_in=swapped_in, kept_as=kept_as)
    return swapped_in, kept_as


def restore_production(
    vault: Vault,
    request_id: str,
    target_url: DatabaseUrl,
    approvers_file: Path,
    *,
    now: Clock = utcnow,
    full_verify: bool = False,
    progress: Progress | None = None,
    confirm: Callable[[str], None] | None = None,
) -> RestoreResult:
    """Restore production under a dual-authorized `restore` request, with the safe swap.

    `confirm` runs after every check and before the request is consumed, so declining the
    confirmation leaves the request usable.
    """
    pinned = auth.authorize_pinned_backup(
        vault,
        request_id,
        approvers_file,
        kind="restore",
        database=target_url.dbname,
        undone="nothing was restored",
        now=now,
    )
    if confirm is not None:
        confirm(target_url.dbname)
    return auth.run_authorized(
        vault,
        pinned.authorization,
        lambda: restore_backup(
            vault, pinned.day, target_url, full_verify=full_verify, now=now, progress=progress
        ),
        lambda result: f"restored {result.manifest.date}; previous kept as {result.previous}",
        now=now,
    )


def rollback_production(
    vault: Vault,
    request_id: str,
    url: DatabaseUrl,
    approvers_file: Path,
    *,
    now: Clock = utcnow,
    confirm: Callable[[str], None] | None = None,
) -> tuple[str, str]:
    """Swap production's kept database back in under a dual-authorized `rollback` request."""
    authorization = auth.authorize(
        vault, request_id, approvers_file, kind="rollback", database=url.dbname, now=now
    )
    swap_in = authorization.request.scope.get("swap_in")
    kept = previous_databases(url)
    if not kept or kept[0] != swap_in:
        raise auth.AuthorizationRefused(
            f"request {request_id} approved swapping in {swap_in}, but the newest kept database is "
            f"{kept[0] if kept else 'none'}; create a new rollback request"
        )
    if confirm is not None:
        confirm(url.dbname)
    return auth.run_authorized(
        vault,
        authorization,
        lambda: rollback_restore(url, now=now),
        lambda swapped: f"{url.dbname} is back to {swapped[0]}; replaced one kept as {swapped[1]}",
        now=now,
    )
