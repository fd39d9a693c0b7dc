"""The figures Prometheus scrapes, per environment and database, read from the store.

A scrape must stay cheap however often it comes: each database's prefix is listed at most
once per `refresh` (scrapes in between are answered from the last reading), and each object
the figures need (manifests, restore proofs, drill reports) is read once and kept while its
size and modification time stay the same. So after the first scrape, a scrape costs at most one
listing per database, and usually none. Nothing here knows Prometheus: `cli/metrics.py` turns
a `Snapshot` into metrics.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from pgvault_assets.engine.basics import names
from pgvault_assets.engine.basics.clock import Clock, utcnow
from pgvault_assets.engine.monitoring.report import (
    STALE_AFTER,
    duration_exceeds_average,
    over_budget,
    size_shrank,
)
from pgvault_assets.engine.storage.store import StoredObject
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import ConfigError, PgvaultError
from pgvault_assets.fleet import each_database_apart
from pgvault_assets.redact import redact
from pgvault_assets.settings import Settings

_log = logging.getLogger(__name__)

DEFAULT_REFRESH = timedelta(seconds=60)
DRILLS = "drills"
SINGLE_DATABASE = "default"  # the fleet of one's name; an environment-wide alert's database too

# `pgvault_alerts_open` has a series for each alert kind the store's records show (0 or the
# count open), so a rule or a panel can tell "healthy" from "not exported".
DATABASE_KINDS = (
    "backup_stale",
    "restorable",  # the last restore proof failed (the check's name, as the sensors alert it)
    "drill_failed",
    "drill_over_objective",
    "duration_within_average",
    "size_not_shrunk",
    "manifest_unreadable",
    "store_unreadable",
)
PITR_KINDS = (
    "pitr_not_archiving",
    "pitr_archive_failing",
    "pitr_archive_lag",
    "pitr_archive_gap",
    "pitr_repository_unreadable",
    "pitr_no_base_backup",
    "pitr_status_unreadable",
)
ENVIRONMENT_KINDS = ("storage_over_budget",)
# Alerts with no durable record anywhere: PagerDuty's own refusals are logged and sent to the
# other sinks, nothing more. The kinds only Dagster's run and check history holds
# (`backup_failed`, a failed checksum check, ...) are the CLI's: see defs/run_episodes.py.
RUN_HISTORY_KINDS = ("pagerduty_failed",)


@dataclass(frozen=True)
class PitrFigures:
    """The point-in-time recovery window and the archive's state of a database's server:
    every database of one server shows the same (its stanza's)."""

    window_start: datetime | None
    window_end: datetime | None
    archive_lag_seconds: float | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatabaseFigures:
    database: str
    last_success_at: datetime | None = None
    last_size_bytes: int | None = None
    last_duration_seconds: float | None = None
    oldest_backup_at: datetime | None = None
    backups_stored: int = 0
    storage_bytes: int = 0
    restore_proof_last_success_at: datetime | None = None
    restore_proof_last_attempt_at: datetime | None = None
    restore_proof_last_passed: bool | None = None
    """Whether the newest restore proof attempt (a success or a failure record) succeeded."""
    drill_last_at: datetime | None = None
    drill_last_rto_seconds: float | None = None
    drill_last_passed: bool | None = None
    drill_last_kind: str | None = None
    """The alert the last drill raised (`drill_failed`, `drill_over_objective`), if any."""
    slower_than_average: bool = False
    shrank: bool = False
    unreadable: int = 0
    backup_dates: tuple[date, ...] = ()
    """The dates the store holds backups of: the success rate's successes."""
    pitr: PitrFigures | None = None
    error: str | None = None
    """Why the database could not be read (its settings, its store); the rest is then unset."""

    def open_alerts(self, now: datetime) -> dict[str, int]:
        """What the sensors would hold open now, from the same figures: a dashboard and a
        rule see the same episodes the alerts do."""
        stale = self.last_success_at is None or now - self.last_success_at > STALE_AFTER
        readable = self.error is None
        found = {
            "backup_stale": int(readable and stale),
            "restorable": int(self.restore_proof_last_passed is False),
            "drill_failed": int(self.drill_last_kind == "drill_failed"),
            "drill_over_objective": int(self.drill_last_kind == "drill_over_objective"),
            "duration_within_average": int(self.slower_than_average),
            "size_not_shrunk": int(self.shrank),
            "manifest_unreadable": self.unreadable,
            "store_unreadable": int(not readable),
        }
        if self.pitr is not None:
            found.update({kind: int(kind in self.pitr.problems) for kind in PITR_KINDS})
        return found


@dataclass(frozen=True)
class Snapshot:
    environment: str
    read_at: datetime
    databases: tuple[DatabaseFigures, ...]
    storage_budget_bytes: int | None = None

    def open_alerts(self) -> dict[str, int]:
        """The environment's own alerts: the budget is one for the whole bucket (a fleet's
        databases together), as the health sensors compare it."""
        used = sum(figures.storage_bytes for figures in self.databases)
        return {
            "storage_over_budget": int(over_budget(used, self.storage_budget_bytes) is not None)
        }


@dataclass
class _Cached:
    signature: tuple[int, datetime]
    value: Any


PitrReader = Callable[[Settings], PitrFigures | None]


def read_pitr(settings: Settings) -> PitrFigures | None:
    """The window and lag of the database's server where `pgvault pitr init` set PITR up for
    it on this host; else None."""
    if not names.pitr_stanza(settings).config_file.exists():
        return None
    # pgBackRest's modules (and psycopg) only where PITR is set up: the CLI's parser reads
    # DEFAULT_REFRESH from this module.
    from pgvault_assets.engine.pitr.archive import pitr_status

    try:
        status = pitr_status(settings)
    except PgvaultError as exc:
        _log.warning("the WAL archive's state cannot be read: %s", redact(str(exc)))
        return PitrFigures(None, None, None, ("pitr_status_unreadable",))
    window = status.window
    lag = status.archiver.lag
    return PitrFigures(
        window.earliest if window else None,
        window.latest if window else None,
        lag.total_seconds() if lag is not None else 0.0,
        tuple(kind for kind, _ in status.problems(settings.pitr.max_lag)),
    )


@dataclass
class _Database:
    name: str
    vault: Vault | None
    settings: Settings | None
    error: str | None = None
    read_at: datetime | None = None
    figures: DatabaseFigures | None = None
    cache: dict[str, _Cached] = field(default_factory=dict)


class MetricsReader:
    """Each database's figures, re-read at most once per `refresh`."""

    def __init__(
        self,
        settings: Settings,
        env: Mapping[str, str],
        *,
        refresh: timedelta = DEFAULT_REFRESH,
        clock: Clock = utcnow,
        pitr: PitrReader = read_pitr,
    ) -> None:
        self.environment = settings.environment
        self.budget = settings.storage_budget_bytes
        self.refresh = refresh
        self.clock = clock
        self.pitr = pitr
        self._pitr_read: dict[Path, PitrFigures | None] = {}
        """This reading's figures of each server's stanza: its databases share them."""
        self.databases: list[_Database] = []
        for name, pinned in each_database_apart(settings, env):
            if isinstance(pinned, ConfigError):
                self.databases.append(_Database(name, None, None, str(pinned)))
            else:
                self.databases.append(_Database(name, Vault.from_settings(pinned), pinned))

    def read(self) -> Snapshot:
        now = self.clock()
        self._pitr_read = {}
        figures = []
        for database in self.databases:
            if database.figures is None or now - (database.read_at or now) >= self.refresh:
                database.figures = self._read(database)
                database.read_at = now
            figures.append(database.figures)
        return Snapshot(self.environment, now, tuple(figures), self.budget)

    def _read(self, database: _Database) -> DatabaseFigures:
        if database.vault is None or database.settings is None:
            return DatabaseFigures(database.name, error=database.error)
        try:
            listing = database.vault.store.list(f"{database.vault.environment}/")
        except PgvaultError as exc:
            _log.warning("metrics: %s cannot be listed: %s", database.name, redact(str(exc)))
            return DatabaseFigures(database.name, error=redact(str(exc)))
        return self._figures(database, listing)

    def _figures(self, database: _Database, listing: list[StoredObject]) -> DatabaseFigures:
        assert database.vault is not None and database.settings is not None
        namespace = database.vault.environment
        manifests: list[Manifest] = []
        proofs: list[datetime] = []
        proof_failures: list[datetime] = []
        drills: list[dict[str, Any]] = []
        unreadable = 0
        seen = set()
        for obj in listing:
            parts = obj.key[len(namespace) + 1 :].split("/")
            if len(parts) != 2:
                continue
            folder, name = parts
            if name == names.MANIFEST_NAME:
                kind = "manifest"
            elif name == names.RESTORE_VERIFIED_NAME:
                kind = "proof"
            elif name == names.RESTORE_FAILED_NAME:
                kind = "proof_failed"
            elif folder == DRILLS and name.endswith(".json"):
                kind = "drill"
            else:
                continue
            seen.add(obj.key)
            value = self._cached(database, obj, kind)
            if kind == "manifest":
                if isinstance(value, Manifest):
                    manifests.append(value)
                else:
                    unreadable += 1
            elif kind == "proof" and isinstance(value, datetime):
                proofs.append(value)
            elif kind == "proof_failed" and isinstance(value, datetime):
                proof_failures.append(value)
            elif kind == "drill" and isinstance(value, dict):
                drills.append(value)
        for key in set(database.cache) - seen:
            del database.cache[key]
        manifests.sort(key=lambda m: m.finished_at)
        newest = manifests[-1] if manifests else None
        drill = max(drills, key=lambda d: d["started_at"], default=None)
        proven, failed = max(proofs, default=None), max(proof_failures, default=None)
        attempted = max((t for t in (proven, failed) if t is not None), default=None)
        return DatabaseFigures(
            database.name,
            last_success_at=newest.finished_at if newest else None,
            last_size_bytes=newest.size_bytes if newest else None,
            last_duration_seconds=newest.duration_seconds if newest else None,
            oldest_backup_at=manifests[0].finished_at if manifests else None,
            backups_stored=len(manifests),
            # The backups re-runs replaced take space until retention, as health_figures counts.
            storage_bytes=sum(v.size_bytes for m in manifests for v in m.versions),
            restore_proof_last_success_at=proven,
            restore_proof_last_attempt_at=attempted,
            restore_proof_last_passed=None if attempted is None else attempted == proven,
            drill_last_at=drill["started_at"] if drill else None,
            drill_last_rto_seconds=drill["scaled_seconds"] if drill else None,
            drill_last_passed=drill["passed"] if drill else None,
            drill_last_kind=drill["alert"] if drill else None,
            slower_than_average=newest is not None
            and duration_exceeds_average(newest, manifests)[0],
            shrank=newest is not None and size_shrank(newest, manifests)[0],
            unreadable=unreadable,
            backup_dates=tuple(m.date for m in manifests),
            pitr=self._pitr_of(database.settings),
        )

    def _pitr_of(self, settings: Settings) -> PitrFigures | None:
        stanza = names.pitr_stanza(settings).config_file
        if stanza not in self._pitr_read:
            self._pitr_read[stanza] = self.pitr(settings)
        return self._pitr_read[stanza]

    def _cached(self, database: _Database, obj: StoredObject, kind: str) -> Any:
        """The parsed object, read from the store only when it is new or changed; None when
        it cannot be read or parsed (a manifest counted unreadable, the others left out)."""
        signature = (obj.size_bytes, obj.modified_at)
        cached = database.cache.get(obj.key)
        if cached is not None and cached.signature == signature:
            return cached.value
        assert database.vault is not None
        value: Any = None
        try:
            raw = database.vault.store.get_bytes(obj.key)
            if raw is not None:
                value = _parse(kind, raw, obj.key)
        except PgvaultError as exc:
            _log.warning("metrics: %s cannot be read: %s", obj.key, redact(str(exc)))
        except (ValueError, KeyError, TypeError):
            value = None
        database.cache[obj.key] = _Cached(signature, value)
        return value


def _parse(kind: str, raw: bytes, key: str) -> Any:
    if kind == "manifest":
        return Manifest.from_json(raw, expected_key=key)
    data = json.loads(raw)
    if kind == "proof":
        return datetime.fromisoformat(data["verified_at"])
    if kind == "proof_failed":
        return datetime.fromisoformat(data["failed_at"])
    passed = bool(data["passed"])
    checked = [*data.get("checks", ()), *data.get("queries", ())]
    # As the drill asset's alert names it (defs/recovery.py drill_alert).
    alert = (
        None
        if passed
        else "drill_over_objective"
        if data.get("failure") is None and all(c["passed"] for c in checked)
        else "drill_failed"
    )
    return {
        "started_at": datetime.fromisoformat(data["started_at"]),
        "scaled_seconds": float(data["scaled_seconds"]),
        "passed": passed,
        "alert": alert,
    }
