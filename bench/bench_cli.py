"""Time the CLI's fixed costs against the interpreter's own start, and say where a backup's go.

Three commands on the embedded default (local store and key, the quickstart's SQLite Dagster
instance): `pgvault --help`, `pgvault list-backups` (one backup stored) and `pgvault backup` of
an empty database, each against `python -c pass` timed in the same rounds, and the backup
against Dagster's floor: a run of one op that does nothing, on the same instance, with no
pgvault in the process. A CLI backup is a Dagster run (its place in the UI's timeline and in
run-failure alerting), so it can cost no less; the difference is pgvault's own. Rounds are
interleaved so load drift hits every contender alike; medians are reported.

A backup is then run again under a tracer (this script in `--trace` mode, in a child of its
own) that stamps when chosen functions start and end; the medians of those spans itemise the
fixed cost. The tracer adds a little of its own, so its total is shown beside the untraced one.

Beside each wall-clock figure is the CPU (user + sys) it took: of the command's process for
the contenders, of the traced process (`time.process_time`, every thread) for each item. On a
busy machine the wall figures drift with the load; the CPU figures hold.

Usage: .venv/bin/python bench/bench_cli.py [--runs 5] [--server URL] [--keep]
(`PYTHONPATH=/another/checkout` times that checkout's pgvault with this environment.)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"
DBNAME = "pgvault_bench_cli"
# Only these reach the children: no pgvault setting from the caller's shell.
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH")

# The least a CLI backup that is a Dagster run can cost, with no pgvault in it: import Dagster,
# open the same instance as the CLI does (its dagster.yaml, compute logs off), and run a job of
# one op that does nothing, in process, with the collector paused while Dagster and the instance
# load and what loaded frozen, as the CLI's backup does (the CLI's other collector and logger
# settings measured within noise of this).
DAGSTER_FLOOR = """
import gc, os, tempfile, yaml
from pathlib import Path
gc.disable()
import dagster as dg
home = Path(os.environ["DAGSTER_HOME"])
with tempfile.TemporaryDirectory() as private:
    config = Path(private) / "dagster.yaml"
    settings = yaml.safe_load((home / "dagster.yaml").read_text()) or {}
    settings["compute_logs"] = {
        "module": "dagster._core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    }
    config.write_text(yaml.safe_dump(settings))
    instance = dg.DagsterInstance.from_config(str(home), config_filename=str(config))
gc.freeze()
gc.enable()

@dg.op
def nothing():
    pass

@dg.job
def floor():
    nothing()

with instance:
    assert floor.execute_in_process(instance=instance).success
"""

GOALS = {"pgvault --help": 0.4, "pgvault list-backups": 0.4, "pgvault backup (empty database)": 1.5}

# What the tracer stamps: (label, module, attribute path). Spans of one label add up.
TRACED = (
    ("settings", "pgvault_assets.cli.main", "load_settings"),
    ("materialize", "pgvault_assets.cli.platform", "materialize_backup"),
    ("build the job", "dagster", "Definitions.resolve_job_def"),
    ("open the instance", "dagster", "DagsterInstance.from_config"),  # the CLI opens it so
    ("run", "dagster", "JobDefinition.execute_in_process"),
    ("backup", "pgvault_assets.defs.backup", "backup_database"),
    ("encryption key", "pgvault_assets.engine.vault.vault", "Vault.encryption_keys"),
    ("connect to PostgreSQL", "psycopg", "connect"),
    ("server context and shape", "pgvault_assets.engine.postgres.server_context", "capture"),
    ("server context and shape", "pgvault_assets.engine.postgres.shape", "read_objects"),
    ("pg_dump --version", "pgvault_assets.engine.backup.backup", "check_tool_fits_server"),
    ("pg_dump through the pipeline", "pgvault_assets.engine.backup.backup", "encrypt_stream"),
    ("server context stored", "pgvault_assets.engine.postgres.server_context", "store_context"),
    ("checks (checksum, history)", "pgvault_assets.defs.backup", "checksum_result"),
    ("checks (checksum, history)", "pgvault_assets.engine.vault.vault", "Vault.list_manifests"),
    ("read the manifest", "pgvault_assets.engine.vault.vault", "Vault.read_manifest"),
)
# How the spans itemise a backup, in order; each is a span, or a gap between spans.
BACKUP_INSIDE = (
    "encryption key",
    "connect to PostgreSQL",
    "server context and shape",
    "pg_dump --version",
    "pg_dump through the pipeline",
    "server context stored",
)


def trace(report: Path, argv: list[str]) -> None:
    """`--trace` mode, in the child: run `pgvault ARGV` here, stamping the traced calls."""
    start = float(os.environ["PGVAULT_BENCH_STARTED"])
    spans: list[tuple[str, float, float]] = []
    cpu_spans: list[tuple[str, float, float]] = []
    stamps: dict[str, float] = {}
    cpu_stamps: dict[str, float] = {}

    def stamp(name: str) -> None:
        stamps[name] = time.time() - start
        cpu_stamps[name] = time.process_time()  # since the process began, every thread

    def stamped(label: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            began, cpu_began = time.time() - start, time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spans.append((label, began, time.time() - start))
                cpu_spans.append((label, cpu_began, time.process_time()))

        return wrapper

    collecting: list[float] = [0.0, 0.0, 0.0]  # began, seconds in all, collections

    def collected(phase: str, _info: dict) -> None:
        if phase == "start":
            collecting[0] = time.thread_time()
        else:
            collecting[1] += time.thread_time() - collecting[0]
            collecting[2] += 1

    gc.callbacks.append(collected)
    stamp("interpreter started")
    # As the console script (pgvault_assets/__main__.py) loads the CLI, where it does so.
    console_script = importlib.util.find_spec("pgvault_assets.__main__") is not None
    if console_script:
        gc.disable()
    from pgvault_assets.cli import main

    if console_script:
        gc.freeze()
        gc.enable()
    stamp("CLI imported")
    # The console script's collector settings (main() sets them before a command imports
    # Dagster), here before the tracer imports what it wraps; a checkout without them keeps
    # Python's.
    cli_main = sys.modules["pgvault_assets.cli.main"]
    gc.set_threshold(*getattr(cli_main, "CLI_GC_THRESHOLDS", gc.get_threshold()))
    platform = importlib.import_module("pgvault_assets.cli.platform")
    paused = getattr(platform, "collection_paused", contextlib.nullcontext)
    with platform.dagster_previews_hidden(), paused():  # as materialize_backup imports them
        importlib.import_module("pgvault_assets.defs.backup")
    for label, module_name, path in TRACED:
        owner = importlib.import_module(module_name)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        setattr(owner, name, stamped(label, getattr(owner, name)))
    stamp("tracer ready")
    sys.argv = ["pgvault", *argv]
    code = main()  # as the console script calls it, so it ends as the command does
    stamp("command done")
    report.write_text(
        json.dumps(
            {
                "code": code,
                "spans": spans,
                "stamps": stamps,
                "cpu_spans": cpu_spans,
                "cpu_stamps": cpu_stamps,
                "gc": {"seconds": collecting[1], "collections": collecting[2]},
            }
        )
    )


def itemise(found: dict, ended: float) -> dict[str, float]:
    """The backup's seconds by phase, from one traced run that ended at `ended`: wall-clock
    seconds from `spans` and `stamps`, or CPU seconds from the `cpu_` ones and the process's
    CPU in all as `ended`."""
    spans, stamps = found["spans"], found["stamps"]

    def span(label: str, nth: int = 0) -> tuple[float, float]:
        return [(s, e) for name, s, e in spans if name == label][nth]

    def total(label: str, within: tuple[float, float]) -> float:
        return sum(
            e - s for name, s, e in spans if name == label and within[0] <= s and e <= within[1]
        )

    materialize, run, backup = span("materialize"), span("run"), span("backup")
    instance = span("open the instance")
    inside = {label: total(label, backup) for label in BACKUP_INSIDE}
    checks = total("checks (checksum, history)", (backup[1], run[1]))
    phases = {
        "interpreter start": stamps["interpreter started"],
        "import the CLI (the parser, the light commands)": (
            stamps["CLI imported"] - stamps["interpreter started"]
        ),
        # The tracer imports what it wraps, so this is where the backup's imports show.
        "import Dagster, the definitions, the backup's engine": (
            stamps["tracer ready"] - stamps["CLI imported"]
        ),
        "settings": total("settings", (0, ended)),
        "the job and its definitions built": instance[0] - materialize[0],
        "open the Dagster instance": instance[1] - instance[0],
        "Dagster: run record, planned events, step start": backup[0] - instance[1],
        **{f"backup: {label}": seconds for label, seconds in inside.items()},
        "backup: locks, listing, manifest written": backup[1] - backup[0] - sum(inside.values()),
        "checks (checksum, history)": checks,
        "Dagster: materialization, check results, run end": run[1] - backup[1] - checks,
        "after the run (watchers stop, instance closed, manifest read)": materialize[1] - run[1],
        "print, and the interpreter's exit": ended - stamps["command done"],
    }
    phases["(the rest)"] = ended - sum(phases.values())
    return phases


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.python = str(Path(args.pgvault).with_name("python"))
        self.url = f"{args.server.rstrip('/')}/{DBNAME}"
        self.cpu: dict[str, list[float]] = {}  # CPU seconds of each timed command, by name
        self.last_cpu = 0.0

    def env(self, store: str) -> dict[str, str]:
        env = {k: os.environ[k] for k in INHERITED if k in os.environ}
        env.update(
            DATABASE_URL=self.url,
            BACKUP_LOCAL_DIR=str(self.work / store),
            BACKUP_LOCAL_KEY_FILE=str(self.work / "key" / "backup.key"),
            DAGSTER_HOME=str(self.work / "dagster_home"),
            PGVAULT_HOME=str(self.work / "home"),
            ENVIRONMENT_NAME="bench",
            # Compiled once, as an installed package is: not rewritten per run, nor in the tree.
            PYTHONPYCACHEPREFIX=str(self.work / "pycache"),
        )
        return env

    def timed(
        self,
        argv: list[str],
        store: str,
        *,
        extra: dict[str, str] | None = None,
        check: bool = True,
    ) -> float:
        env = self.env(store) | (extra or {})
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        result = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # The command's process and the children it waited for (pg_dump).
        self.last_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if check and result.returncode != 0:
            sys.exit(f"{' '.join(argv)} failed: {result.stderr.strip()}")
        return seconds

    def backup(self, round_no: int) -> float:
        store = f"store-{round_no}"
        seconds = self.timed([self.args.pgvault, "backup"], store)
        shutil.rmtree(self.work / store)  # each run backs up into a store of its own
        return seconds

    def traced_backup(self, round_no: int) -> tuple[dict[str, float], dict[str, float]]:
        """The traced backup's phases in wall-clock seconds and in CPU seconds."""
        report = self.work / "trace.json"
        store = f"store-traced-{round_no}"
        started = time.time()
        self.timed(
            [self.python, __file__, "--trace", str(report), "backup"],
            store,
            extra={"PGVAULT_BENCH_STARTED": repr(started)},
        )
        ended = time.time() - started
        cpu = self.last_cpu
        shutil.rmtree(self.work / store)
        found = json.loads(report.read_text())
        on_cpu = {"spans": found["cpu_spans"], "stamps": found["cpu_stamps"]}
        return (
            itemise(found, ended) | {"total (traced)": ended},
            itemise(on_cpu, cpu)
            | {
                "total (traced)": cpu,
                "garbage collection, within the items above": found["gc"]["seconds"],
                "garbage collections (count)": found["gc"]["collections"],
            },
        )


def psql(server: str, sql: str) -> None:
    subprocess.run(
        ["psql", "-X", "-q", "-d", f"{server.rstrip('/')}/postgres", "-c", sql], check=True
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--server", default=DEFAULT_SERVER)
    parser.add_argument("--pgvault", default=str(Path(sys.executable).with_name("pgvault")))
    parser.add_argument("--keep", action="store_true", help="keep the database and temp dir")
    parser.add_argument("--trace", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trace:
        trace(Path(args.trace[0]), args.trace[1:])
        return 0

    work = Path(tempfile.mkdtemp(prefix="pgvault-bench-cli-"))
    psql(args.server, f"DROP DATABASE IF EXISTS {DBNAME}")
    psql(args.server, f"CREATE DATABASE {DBNAME}")
    bench = Bench(args, work)
    try:
        (work / "dagster_home").mkdir()
        subprocess.run(  # the quickstart's instance: the repository's dagster.yaml on SQLite
            [
                bench.python,
                str(REPO / "scripts" / "quickstart_instance.py"),
                str(REPO / "dagster.yaml"),
                str(work / "dagster_home" / "dagster.yaml"),
            ],
            check=True,
        )
        # Untimed: the instance's storage is created, the bytecode compiled, the key made,
        # and `listed` gets the backup that list-backups shows.
        bench.timed([args.pgvault, "status"], "listed", check=False)  # no backup yet: exit 1
        bench.timed([args.pgvault, "backup"], "listed")
        contenders: dict[str, Callable[[int], float]] = {
            "python -c pass": lambda _: bench.timed([bench.python, "-c", "pass"], "listed"),
            "pgvault --help": lambda _: bench.timed([args.pgvault, "--help"], "listed"),
            "pgvault list-backups": lambda _: bench.timed([args.pgvault, "list-backups"], "listed"),
            "pgvault backup (empty database)": bench.backup,
            "Dagster's floor (a one-op run)": lambda _: bench.timed(
                [bench.python, "-c", DAGSTER_FLOOR], "listed"
            ),
        }
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        cpu: dict[str, list[float]] = {name: [] for name in contenders}
        phases: list[dict[str, float]] = []
        cpu_phases: list[dict[str, float]] = []
        for round_no in range(args.runs):
            for name, run in contenders.items():
                seconds[name].append(run(round_no))
                cpu[name].append(bench.last_cpu)
            on_wall, on_cpu = bench.traced_backup(round_no)
            phases.append(on_wall)
            cpu_phases.append(on_cpu)
            print(f"round {round_no + 1}/{args.runs} done", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            psql(args.server, f"DROP DATABASE IF EXISTS {DBNAME}")

    baseline = statistics.median(seconds["python -c pass"])
    print(f"\nmedians of {args.runs} (seconds; ratio to `python -c pass`, {baseline:.3f} s)")
    print(f"  {'':<34} {'wall':>8}  {'ratio':>7} {'CPU':>9}")
    for name, values in seconds.items():
        median = statistics.median(values)
        goal = GOALS.get(name)
        verdict = (
            "" if goal is None else f"  goal <= {goal} s: {'ok' if median <= goal else 'MISSED'}"
        )
        on_cpu = statistics.median(cpu[name])
        print(f"  {name:<34} {median:6.3f} s  {median / baseline:6.1f}x {on_cpu:7.3f} s{verdict}")
    backup = statistics.median(seconds["pgvault backup (empty database)"])
    floor = statistics.median(seconds["Dagster's floor (a one-op run)"])
    print(
        f"  the backup over Dagster's floor: {backup / floor:.2f}x, "
        f"pgvault's own {backup - floor:.3f} s"
    )
    print(f"\nwhere a CLI backup of an empty database goes (medians of {args.runs} traced runs)")
    print(f"  {'':<58} {'wall':>8} {'CPU':>9}")
    for phase in phases[0]:
        wall = statistics.median(p[phase] for p in phases)
        on_cpu = statistics.median(p[phase] for p in cpu_phases)
        print(f"  {phase:<58} {wall:6.3f} s {on_cpu:7.3f} s")
    collected = statistics.median(
        p["garbage collection, within the items above"] for p in cpu_phases
    )
    collections = statistics.median(p["garbage collections (count)"] for p in cpu_phases)
    print(f"  {'of which garbage collection (CPU)':<58} {'':8} {collected:7.3f} s")
    print(f"  {'garbage collections':<58} {'':8} {collections:7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
