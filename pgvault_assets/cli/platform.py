"""The CLI commands that go through the platform: backup, cleanup and status.

`pgvault backup` is a Dagster materialization of the day's partition on the configured
instance, not a side door around it: the backup, its checks and their results show in the UI
exactly as a scheduled one does. Dagster is imported only by the commands that use it: every
`pgvault` command builds this parser, and importing Dagster costs a second or two of CPU. So
the functions below import Dagster, and pgvault's modules that import it, where they need
them, on purpose; type annotations name Dagster's types under TYPE_CHECKING only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import os
import re
import signal
import sys
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from rich.table import Table

from pgvault_assets.cli.args import (
    add_database_option,
    add_every_database_option,
    databases_shown,
    parse_date,
    read_each_shown,
    retry_count,
)
from pgvault_assets.cli.console import console, errors
from pgvault_assets.engine.backup.cleanup import run_cleanup
from pgvault_assets.engine.basics import names as object_names
from pgvault_assets.engine.basics.clock import latest_complete_day, utcnow
from pgvault_assets.engine.basics.interrupts import SIGNALS, Interrupted, handled_here, signals_seen
from pgvault_assets.engine.monitoring.report import (
    FLEET_BACKUPS,
    STALE_AFTER,
    HealthFigures,
    format_bytes,
    format_duration,
    health_figures,
    health_warnings,
    over_budget,
)
from pgvault_assets.engine.vault.manifest import Manifest
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.errors import BackupFailed, ConfigError, PgvaultError
from pgvault_assets.fleet import load_fleet
from pgvault_assets.redact import redact
from pgvault_assets.settings import Settings, load_settings, pgvault_home

if TYPE_CHECKING:
    from dagster import DagsterInstance, ExecuteInProcessResult


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = subparsers.add_parser(
        "backup",
        help="back up the latest complete day as a Dagster materialization (shows in the UI)",
    )
    sub.add_argument(
        "--date", type=parse_date, default=None, help="the day to back up (default: yesterday, UTC)"
    )
    sub.add_argument(
        "--prove-restorable",
        action="store_true",
        help="also decrypt it fully and restore it onto a throwaway cluster (as the daily job does)",
    )
    sub.add_argument(
        "--accept-new-source",
        action="store_true",
        help="back up this database though the environment's backups come from another "
        "(a server replaced, say); recorded in the manifest",
    )
    sub.add_argument(
        "--retries",
        type=retry_count,
        default=None,
        metavar="N",
        help="retry a failed backup N times (default: none at a terminal, where you see the "
        "reason at once; BACKUP_MAX_RETRIES otherwise, as from cron)",
    )
    add_database_option(sub)
    sub.set_defaults(handler=backup_command)

    sub = subparsers.add_parser(
        "cleanup",
        help="apply the retention policy and remove what interrupted runs left in the store",
    )
    sub.add_argument(
        "--dry-run",
        action="store_true",
        help="show what would be kept, deleted and repaired; change nothing",
    )
    add_database_option(sub)
    sub.set_defaults(handler=cleanup_command)

    sub = subparsers.add_parser(
        "status", help="the backup health dashboard: last success, success rate, duration, storage"
    )
    add_every_database_option(sub)
    sub.set_defaults(handler=status_command)


def dagster_home() -> Path:
    """`DAGSTER_HOME` when set, else the embedded instance the quickstart's `dagster dev` uses,
    in pgvault's fixed home (not the current directory)."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    home = pgvault_home() / "dagster_home"
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return home


# Dagster's documented setting for an instance that captures no compute logs.
_NO_COMPUTE_LOGS = {
    "module": "dagster._core.storage.noop_compute_log_manager",
    "class": "NoOpComputeLogManager",
}


@contextlib.contextmanager
def open_instance(instance: DagsterInstance | None = None) -> Iterator[DagsterInstance]:
    """The instance of `DAGSTER_HOME` (or the embedded one), as its `dagster.yaml` configures
    it, but for one thing: the CLI's runs print straight to the terminal, not through
    Dagster's compute logs.

    The local compute log manager mirrors a run's output back with a `tail` child and a
    Python watcher child in pgvault's process group: a Ctrl-C reaches them too, and the
    watcher prints a traceback. The operator reads this output in the terminal anyway; the
    run's events stay in the UI. So the instance is opened from a private copy of the
    configuration with `compute_logs` set to Dagster's no-op manager, which exists only
    while the instance reads it; the operator's file is never changed.
    """
    from dagster import DagsterInstance  # deferred on purpose: see the module docstring

    if instance is not None:
        yield instance
        return
    home = dagster_home()
    with tempfile.TemporaryDirectory(prefix="pgvault-instance-") as private:
        config = Path(private) / "dagster.yaml"
        settings = {**_instance_config(home), "compute_logs": _NO_COMPUTE_LOGS}
        config.write_text(yaml.safe_dump(settings))
        # An absolute file name: Dagster joins it to the home, which stays the storage's base.
        opened = DagsterInstance.from_config(str(home), config_filename=str(config))
    with opened:
        yield opened


def _instance_config(home: Path) -> dict[str, object]:
    try:
        loaded = yaml.safe_load((home / "dagster.yaml").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"{home / 'dagster.yaml'} cannot be read ({' '.join(str(exc).split())}); "
            "fix the Dagster instance's configuration"
        ) from None
    return dict(loaded) if isinstance(loaded, dict) else {}


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No garbage collection while Dagster, the definitions and the instance's storage load:
    some hundred thousand objects that live as long as the process, which the collector
    would walk again and again as they arrive (more CPU than the backup of an empty
    database). On leaving, what loaded is frozen out of the collector's reach and it
    resumes."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def dagster_previews_hidden() -> Iterator[None]:
    """Hide Dagster's beta and preview notices inside this block only, and nothing else.

    Dagster flags the partitioned asset checks (decrypts_fully, restorable) as preview when
    their definitions load: that notice is for pgvault's developers, not its operators.
    Every other warning, and these outside the block, still shows.
    """
    from dagster import BetaWarning, PreviewWarning  # deferred on purpose: see the module docstring

    with warnings.catch_warnings():
        for category in (BetaWarning, PreviewWarning):
            warnings.filterwarnings(
                "ignore", message=r".*is currently in (beta|preview)", category=category
            )
        yield


# Tags the CLI's run, so the thread that announces its retries can find it in the instance.
INVOCATION_TAG = "pgvault/cli_invocation"
RETRY_POLL_SECONDS = 0.5
_EXCEPTION_PREFIX = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*: ")


def retry_line(attempt: int, reason: str, failed_at: float, seconds_to_wait: float) -> str:
    """`attempt N failed: <reason>; retrying at HH:MM:SS UTC (in S s)`, on one line."""
    reason = _EXCEPTION_PREFIX.sub("", " ".join(redact(reason).split()))
    at = datetime.fromtimestamp(failed_at + seconds_to_wait, UTC)
    return (
        f"attempt {attempt} failed: {reason}; "
        f"retrying at {at:%H:%M:%S} UTC (in {seconds_to_wait:.0f} s)"
    )


class RetryAnnouncer:
    """Say each failed attempt of the CLI's run and when the next one comes, as Dagster
    records it: the in-process executor waits out its backoff in silence, minutes on end
    against a server that is down, before the one error line at the end."""

    def __init__(self, instance: DagsterInstance, token: str, say: Callable[[str], None]) -> None:
        self._instance = instance
        self._token = token
        self._say = say
        self._announced = 0
        self._run_id: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="pgvault-retries", daemon=True)

    def __enter__(self) -> RetryAnnouncer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        # A retry recorded since the last look; never in the way of the run's own outcome.
        with contextlib.suppress(Exception):
            self.announce()

    def _watch(self) -> None:
        while not self._stop.wait(RETRY_POLL_SECONDS):
            with contextlib.suppress(Exception):  # a busy instance is looked at next time
                self.announce()

    def announce(self) -> None:
        from dagster import DagsterEventType, RunsFilter  # deferred: see the module docstring

        with self._lock:
            if self._run_id is None:
                runs = self._instance.get_runs(
                    filters=RunsFilter(tags={INVOCATION_TAG: self._token}), limit=1
                )
                if not runs:
                    return
                self._run_id = runs[0].run_id
            retries = self._instance.all_logs(
                self._run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY
            )
            for entry in retries[self._announced :]:
                self._announced += 1
                event = entry.get_dagster_event()
                data = event.event_specific_data
                error = data.error.cause or data.error
                self._say(
                    retry_line(
                        self._announced, error.message, entry.timestamp, data.seconds_to_wait or 0
                    )
                )


class InterruptWatch:
    """End the CLI's run at once on SIGINT or SIGTERM that arrives while Dagster holds the
    signals: between attempts (it waits out a retry's backoff, minutes on end, and would then
    take the signal for a failed attempt to retry) or between steps.

    Inside a step, the engine takes the signal itself, undoes its work and ends the run
    CANCELED (defs/backup.py). Outside one nothing of pgvault's is running, no child and no
    upload, so the run is marked CANCELED here and the process ends with the signal's status,
    without waiting for Dagster.
    """

    def __init__(self, instance: DagsterInstance, token: str, day: date) -> None:
        self._instance = instance
        self._token = token
        self._day = day
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="pgvault-signals", daemon=True)

    def __enter__(self) -> InterruptWatch:
        self._seen = contextlib.ExitStack()
        self._signals = self._seen.enter_context(signals_seen())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._signals.wake()  # not a poll's wait later: the command's end waits for this
        self._thread.join()
        self._seen.close()

    def _watch(self) -> None:
        while not self._stop.is_set():
            for signum in self._signals.wait(RETRY_POLL_SECONDS):
                if signum in SIGNALS and not handled_here():
                    self._end(signum)

    def _end(self, signum: int) -> None:
        from dagster import RunsFilter  # deferred on purpose: see the module docstring

        name = signal.Signals(signum).name
        line = (
            f"backup of {self._day.isoformat()} interrupted between its attempts or steps "
            f"({name}); what is stored is what pgvault list-backups shows"
        )
        with contextlib.suppress(Exception):  # the exit matters more than the record
            runs = self._instance.get_runs(
                filters=RunsFilter(tags={INVOCATION_TAG: self._token}), limit=1
            )
            if runs:
                self._instance.report_run_canceling(runs[0], message=line)
                self._instance.report_run_canceled(runs[0], message=line)
        errors.print(f"error: {line}", markup=False)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)


# workspace.yaml's name for pgvault's code location (and pyproject's [tool.dagster]).
CODE_LOCATION = "pgvault"
SINGLE_REPOSITORY = "__repository__"  # Dagster's name for a Definitions object's repository


@contextlib.contextmanager
def runs_of_the_code_location(instance: DagsterInstance, job_name: str) -> Iterator[None]:
    """Runs created in this block carry the code location's origin, as the runs the schedule,
    the daemon or the UI launch do. The UI's Overview timeline lists runs by their job in a
    code location and leaves out a run without one: every CLI backup was missing there.
    `execute_in_process` takes no origin, so the instance's run creation is handed one for
    the length of the block; the origin names the location only (the workspace knows how to
    load it), which is all the UI reads of it."""
    from dagster._core.remote_origin import (  # deferred on purpose: see the module docstring
        RegisteredCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )

    repository = RemoteRepositoryOrigin(
        RegisteredCodeLocationOrigin(CODE_LOCATION), SINGLE_REPOSITORY
    )
    create = instance.create_run_for_job
    instance.create_run_for_job = functools.partial(  # type: ignore[method-assign]
        create, remote_job_origin=RemoteJobOrigin(repository, job_name)
    )
    try:
        yield
    finally:
        del instance.create_run_for_job


def materialize_backup(
    day: date,
    *,
    instance: DagsterInstance | None = None,
    prove_restorable: bool = False,
    say: Callable[[str], None] | None = None,
    settings: Settings | None = None,
    accept_new_source: bool = False,
    retries: int | None = None,
) -> Manifest:
    """Run partition `day` of the backup asset with its checks; return the new manifest.

    The asset's own checks (checksum against the manifest, duration, size) always run. The
    full decrypt and the throwaway restore re-read and re-load the whole backup, so an
    operator's backup runs them only when asked; the daily schedule always runs them.
    With `say`, each failed attempt that Dagster retries is said as it happens.
    `settings` pinned to a fleet database (main.py) back up that database's asset.
    `accept_new_source` tags the run so the asset accepts another source database.
    `retries` replaces BACKUP_MAX_RETRIES for this run.
    """
    settings = settings or load_settings()
    with contextlib.ExitStack() as running:
        with collection_paused():  # until the instance is open; Dagster loads from the first line
            # Deferred on purpose (see the module docstring), and inside the block because
            # loading the checks' definitions is what warns.
            running.enter_context(dagster_previews_hidden())
            from dagster import AssetSelection, Definitions, define_asset_job

            from pgvault_assets.defs.backup import (
                ACCEPT_NEW_SOURCE_TAG,
                Build,
                make_database_backup,
                make_decrypts_fully,
                make_restorable,
            )
            from pgvault_assets.defs.history import backup_run_tags
            from pgvault_assets.defs.resources import resource_defs
            from pgvault_assets.engine.backup.backup import check_backup_date

            check_backup_date(day, utcnow())
            config = settings.platform
            if retries is not None:
                config = dataclasses.replace(config, max_retries=retries)
            build = Build.of(load_fleet(config.fleet_file), config)
            names = build.names.of(build.fleet.choose(settings.database).name)
            job_name = build.names.backup_job
            assets = [make_database_backup(build, names)]
            if prove_restorable:
                assets += [make_decrypts_fully(build, names), make_restorable(build, names)]
            # The run carries the scheduled job's name, so the UI lists it with the scheduled
            # runs rather than as an unnamed ephemeral job.
            job = Definitions(
                assets=assets[:1],
                asset_checks=assets[1:],
                jobs=[define_asset_job(job_name, selection=AssetSelection.all())],
                resources=resource_defs(),
            ).resolve_job_def(job_name)
            active = running.enter_context(open_instance(instance))
        token = uuid.uuid4().hex
        with (
            runs_of_the_code_location(active, job_name),
            RetryAnnouncer(active, token, say or _silent),
            InterruptWatch(active, token, day),
        ):
            result = job.execute_in_process(
                instance=active,
                partition_key=day.isoformat(),
                raise_on_error=False,
                tags={
                    "pgvault/launched_by": "cli",
                    # The CLI retries with --retries, in this process; the daemon's run retries
                    # (dagster.yaml) are for runs it launched, not for a run a terminal started.
                    "dagster/max_retries": "0",
                    INVOCATION_TAG: token,
                    **backup_run_tags(settings.environment, settings.database),
                    **({ACCEPT_NEW_SOURCE_TAG: "true"} if accept_new_source else {}),
                },
                # The run's full event log is in the UI; the terminal gets pgvault's own lines
                # (Dagster's ERROR events carry stack traces, and the failure is reported below).
                run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            )
    if not result.success:
        _raise_if_interrupted(result)
        raise BackupFailed(
            f"backup of {day.isoformat()} failed: {_first_failure(result)}; "
            f"see run {result.run_id[:8]} in the Dagster UI"
        )
    return Vault.from_settings(settings).read_manifest(day)


def _silent(line: str) -> None:
    """No one to tell: a caller that reports the result only."""


def _raise_if_interrupted(result: ExecuteInProcessResult) -> None:
    """A run a signal ended (CANCELED, see defs/backup.py) ends the command as that signal."""
    from dagster import DagsterEventType  # deferred on purpose: see the module docstring

    from pgvault_assets.defs.backup import INTERRUPTED_METADATA_KEY

    for event in result.all_events:
        if event.event_type != DagsterEventType.STEP_FAILURE:
            continue
        failure = event.step_failure_data.user_failure_data
        if failure and INTERRUPTED_METADATA_KEY in failure.metadata:
            signum = failure.metadata[INTERRUPTED_METADATA_KEY].value
            raise Interrupted(int(signum), " ".join((failure.description or "").split()))


def _first_failure(result: ExecuteInProcessResult) -> str:
    from dagster import DagsterEventType  # deferred on purpose: see the module docstring

    for event in result.all_events:
        if event.event_type != DagsterEventType.STEP_FAILURE:
            continue
        data = event.step_failure_data
        if data.user_failure_data and data.user_failure_data.description:
            return " ".join(data.user_failure_data.description.split())
        if data.error:
            # An unexpected error a retry policy gave up on reads "Exceeded max_retries of
            # 0": what went wrong is the error it wraps, its innermost cause.
            error = data.error
            while error.cause is not None:
                error = error.cause
            return " ".join(error.message.split())
    return "the run failed"


def backup_command(args: argparse.Namespace, settings: Settings) -> int:
    day = args.date or latest_complete_day(utcnow())
    console.print(f"backing up {settings.require_database()} as {day.isoformat()} …")
    retries = args.retries
    if retries is None and sys.stdin.isatty():
        retries = 0  # someone is waiting: the reason now beats a retry in minutes
    manifest = materialize_backup(
        day,
        prove_restorable=args.prove_restorable,
        say=lambda line: console.print(line, markup=False),
        settings=settings,
        accept_new_source=args.accept_new_source,
        retries=retries,
    )
    console.print(
        f"backup {manifest.date.isoformat()} stored: {format_bytes(manifest.size_bytes)} "
        f"({manifest.compression_ratio:.1f}x smaller than the dump), "
        f"{format_duration(manifest.duration_seconds)}, sha256 {manifest.sha256[:12]}…"
    )
    if manifest.replaced:
        replaced = manifest.replaced[-1]
        console.print(
            f"it replaces the backup of {day.isoformat()} taken at "
            f"{replaced.finished_at:%Y-%m-%d %H:%M:%S} UTC (sha256 {replaced.sha256[:12]}…), "
            "kept until retention: pgvault list-backups --versions",
            markup=False,
        )
    if manifest.new_source and manifest.source is not None:
        console.print(
            f"{manifest.source.describe()} is now the source of these backups", markup=False
        )
    return 0


def cleanup_command(args: argparse.Namespace, settings: Settings) -> int:
    vault = Vault.from_settings(settings)
    result = run_cleanup(vault, settings.retention, now=utcnow(), dry_run=args.dry_run)
    plan = result.plan
    table = Table(title="retention plan")
    # The backed-up day's age, which the retention rules count: not the time since it was
    # taken, which list-backups shows as "taken".
    for column in ("date", "tier", "day's age", "size", "decision"):
        table.add_column(column)
    for decision in sorted(plan.keep + plan.delete, key=lambda d: d.day, reverse=True):
        verdict = "delete" if decision in plan.delete else "keep"
        table.add_row(
            decision.day.isoformat(),
            decision.tier.value,
            f"{decision.age_days} d",
            format_bytes(decision.size_bytes),
            f"{verdict}: {decision.reason}",
        )
    console.print(table)
    for line in result.repair_lines():
        console.print(f"dry run: {line}" if args.dry_run else f"repaired: {line}")
    for line in result.kept_leftovers:
        console.print(line)
    kept = ", ".join(f"{n} {tier}" for tier, n in plan.kept_per_tier.items())
    if plan.blocked_reason:
        console.print(f"nothing deleted: {plan.blocked_reason}")
        return 1
    if args.dry_run:
        console.print(
            f"dry run: would delete {len(plan.delete)} backups "
            f"({format_bytes(plan.storage_freed_bytes)}), keep {kept}"
        )
        return 0
    gone = result.deleted_backups
    freed = sum(d.size_bytes for d in gone)
    console.print(
        f"deleted {len(gone)} backups ({len(result.deleted_keys)} objects, "
        f"{format_bytes(freed)}), kept {kept}"
    )
    return 0


def status_command(args: argparse.Namespace, settings: Settings) -> int:
    """The backup health of the databases shown, from one read of the run history: one
    database's figures as the manual's table, or one row per database; exit 1 when any is
    stale, warned about or cannot be read."""
    every, databases = databases_shown(args, settings)
    read = read_each_shown(
        every, databases, lambda pinned: Vault.from_settings(pinned).list_manifests()
    )
    with dagster_previews_hidden():
        # Deferred on purpose: both import Dagster (see the module docstring).
        from pgvault_assets.defs.history import failed_runs_by_key
        from pgvault_assets.defs.naming import names_of

    now = utcnow()
    names = names_of(load_fleet(settings.platform.fleet_file))
    keys = {names.of(name).backup: name for name in read}
    with open_instance() as instance:
        by_key = failed_runs_by_key(instance, keys, now - timedelta(days=31), settings.environment)
    figures = {
        name: health_figures(found, by_key[names.of(name).backup], today=now.date())
        for name, found in read.items()
        if not isinstance(found, PgvaultError)
    }
    if every:
        return _every_database_status(settings, read, figures, now)
    (only,) = figures.values()
    return _database_status(settings, only, now)


def _database_status(settings: Settings, figures: HealthFigures, now: datetime) -> int:
    namespace = object_names.namespace(settings.environment, settings.database)
    table = Table(title=f"pgvault backup health: {namespace}", show_header=False)
    table.add_column("figure")
    table.add_column("value")
    rate = "-" if figures.success_rate is None else f"{figures.success_rate:.1%}"
    table.add_row("last successful backup", _last_success(figures, now))
    table.add_row(
        "success rate (30 days)",
        f"{rate} ({figures.success_count} ok, {figures.failure_count} failed)",
    )
    table.add_row("average duration (30 days)", format_duration(figures.average_duration_seconds))
    table.add_row("storage used", format_bytes(figures.storage_used_bytes))
    console.print(table)
    warnings = health_warnings(figures, storage_budget_bytes=settings.storage_budget_bytes)
    for _, message in warnings:
        console.print(f"warning: {message}")
    stale = _stale(figures, now)
    if stale:
        console.print("critical: no backup has succeeded in the last 36 h")
    return 1 if stale or warnings else 0


def _last_success(figures: HealthFigures, now: datetime) -> str:
    if figures.last_success_at is None or figures.last_success_day is None:
        return "never"
    return (
        f"{figures.last_success_day.isoformat()} (finished {figures.last_success_at:%Y-%m-%d %H:%M} UTC, "
        f"{(now - figures.last_success_at).total_seconds() / 3600:.0f} h ago)"
    )


def _stale(figures: HealthFigures, now: datetime) -> bool:
    return figures.last_success_at is None or now - figures.last_success_at > STALE_AFTER


def _every_database_status(
    settings: Settings,
    read: dict[str, list[Manifest] | PgvaultError],
    figures_of: dict[str, HealthFigures],
    now: datetime,
) -> int:
    """One row per database; the fleet's storage against the environment's budget."""
    table = Table(title=f"pgvault backup health: every database of {settings.environment}")
    for column in ("database", "last successful backup", "success rate (30 days)"):
        table.add_column(column)
    for column in ("average duration (30 days)", "storage used", "state"):
        table.add_column(column)
    unhealthy = 0
    storage = 0
    for name, found in read.items():
        if isinstance(found, PgvaultError):
            unhealthy += 1
            table.add_row(name, "-", "-", "-", "-", f"error: {redact(str(found))}")
            continue
        figures = figures_of[name]
        storage += figures.storage_used_bytes
        problems = [message for _, message in health_warnings(figures, storage_budget_bytes=None)]
        if _stale(figures, now):
            problems.insert(0, "critical: no backup has succeeded in the last 36 h")
        unhealthy += bool(problems)
        rate = "-" if figures.success_rate is None else f"{figures.success_rate:.1%}"
        table.add_row(
            name,
            _last_success(figures, now),
            f"{rate} ({figures.success_count} ok, {figures.failure_count} failed)",
            format_duration(figures.average_duration_seconds),
            format_bytes(figures.storage_used_bytes),
            "; ".join(problems) or "ok",
        )
    console.print(table)
    if over := over_budget(storage, settings.storage_budget_bytes, FLEET_BACKUPS):
        console.print(f"warning: {over}")
        unhealthy += 1
    return 1 if unhealthy else 0
