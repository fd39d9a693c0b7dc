"""Time one fleet tick through a real dagster-daemon against the same backups one after another.

N databases of a given size on the local server are declared as a fleet of S servers (each a
variable naming the same server) of limit L. The tick: the daemon's schedule requests one run
per database and the runs share each server's L slots; its time is from the first run queued
to the last run finished (the daemon's start and the wait for the minute are not counted).
The baseline: `pgvault backup --database X` for each database in turn, on the same Dagster
instance. Rounds alternate which goes first; each round backs up into fresh stores on a fresh
Dagster database, so no run key or backup of an earlier round is reused.

The tick's runs also run each backup's `decrypts_fully` check (one more read of the backup),
which `pgvault backup` leaves out: the ratio is, if anything, against the tick.

Usage: .venv/bin/python bench/bench_fleet.py [--databases 6] [--size-mb 20] [--servers 2]
       [--limit 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml
from benchlib import environ_without_pgvault
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.test_fleet.daemon import TERMINAL, started_daemon  # noqa: E402

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"
PREFIX = "pgvault_bench_fleet_"
DAGSTER_DB = f"{PREFIX}dagster"
SCHEDULE = "fleet_backup_schedule_02"
# The code location the daemon loads: the fleet, its schedule ticking once, at the time
# PGVAULT_BENCH_TICK_AT names (a schedule's run keys only dedupe within one tick's scheduled
# time, so a tick every minute would start every database's run again; the daemon reloads the
# location each minute, so the time comes from the environment).
LOCATION = """
import os

from dagster import Definitions

from pgvault_assets.defs.backup import Build, backup_defs
from pgvault_assets.defs.resources import resource_defs
from pgvault_assets.fleet import load_fleet
from pgvault_assets.settings import platform_section

HOUR, MINUTE = os.environ["PGVAULT_BENCH_TICK_AT"].split(":")
defs = Definitions.merge(
    backup_defs(
        Build.of(load_fleet(platform_section().fleet_file), platform_section()),
        cron_for_hour=lambda _hour: f"{MINUTE} {HOUR} * * *",
    ),
    Definitions(resources=resource_defs()),
)
"""


class Server:
    """Maintenance connection for the benchmark's databases (all named PREFIX...)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = psycopg.connect(f"{url}/postgres", autocommit=True, connect_timeout=5)

    def recreate(self, name: str) -> str:
        self.drop(name)
        self.conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return f"{self.url}/{name}"

    def drop(self, name: str) -> None:
        self.conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def close(self) -> None:
        self.conn.close()


def fill(url: str, size_mb: int) -> None:
    """About `size_mb` of rows that compress like text (md5 hex: ~2x)."""
    rows = max(1, size_mb * 1024 * 1024 // 110)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE t AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) AS payload "
            "FROM generate_series(1, %s) AS g",
            [rows],
        )


def write_fleet(work: Path, args: argparse.Namespace, dbnames: list[str]) -> dict[str, str]:
    """The fleet file (databases spread round-robin over the servers); the servers' variables."""
    variables = {
        f"PGVAULT_BENCH_SERVER_{i}_URL": f"{args.server}/postgres" for i in range(args.servers)
    }
    servers = [
        {"name": f"s{i}", "url_env": variable, "max_concurrent_backups": args.limit}
        for i, variable in enumerate(variables)
    ]
    databases = [
        {"name": f"db{i}", "server": f"s{i % args.servers}", "dbname": dbname}
        for i, dbname in enumerate(dbnames)
    ]
    (work / "fleet.yaml").write_text(yaml.safe_dump({"servers": servers, "databases": databases}))
    return variables


def base_env(work: Path, variables: dict[str, str], dagster_url: str) -> dict[str, str]:
    env = environ_without_pgvault()
    env.update(variables)
    env.update(
        PGVAULT_FLEET_FILE=str(work / "fleet.yaml"),
        BACKUP_LOCAL_KEY_FILE=str(work / "key" / "backup.key"),
        DAGSTER_HOME=str(work / "dagster_home"),
        DAGSTER_PG_URL=dagster_url,
        ENVIRONMENT_NAME="bench",
    )
    return env


def run(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )


def tick_seconds(env: dict[str, str], count: int, timeout: float) -> float:
    """Wait for the tick's `count` runs to finish; first queued -> last finished, in seconds."""
    # The instance is the one DAGSTER_HOME and DAGSTER_PG_URL name in this process's env.
    os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "DAGSTER_PG_URL")})

    ends = time.monotonic() + timeout
    with DagsterInstance.get() as instance:
        while time.monotonic() < ends:
            records = instance.get_run_records(
                filters=RunsFilter(tags={"dagster/schedule_name": SCHEDULE})
            )
            if len(records) >= count and all(r.dagster_run.status in TERMINAL for r in records):
                failed = [
                    r.dagster_run.run_id
                    for r in records
                    if r.dagster_run.status != DagsterRunStatus.SUCCESS
                ]
                if failed:
                    raise SystemExit(f"{len(failed)} tick runs did not succeed: {failed}")
                first = min(r.create_timestamp.timestamp() for r in records)
                last = max(r.end_time or 0.0 for r in records)
                return last - first
            time.sleep(0.5)
    raise SystemExit(f"the tick's {count} runs did not finish within {timeout:.0f} s")


def one_tick(work: Path, env: dict[str, str], count: int, pgvault: str, timeout: float) -> float:
    run([pgvault, "fleet", "apply-limits"], env)
    # The first whole minute at least 60 s away: the daemon is up and sees the schedule first.
    tick = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    env = {**env, "PGVAULT_BENCH_TICK_AT": f"{tick.hour}:{tick.minute}"}
    with started_daemon(work / "dagster_home", env):
        return tick_seconds(env, count, timeout)


def one_after_another(env: dict[str, str], names: list[str], pgvault: str) -> float:
    started = time.perf_counter()
    for name in names:
        run([pgvault, "backup", "--database", name], env)
    return time.perf_counter() - started


def prepare_home(work: Path) -> None:
    """The repo's dagster.yaml (PostgreSQL storage, pools, queued runs) and the workspace."""
    home = work / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    (work / "location.py").write_text(LOCATION)
    workspace = {
        "load_from": [
            {
                "python_file": {
                    "relative_path": str(work / "location.py"),
                    "working_directory": str(REPO),
                    "location_name": "pgvault_fleet_bench",
                }
            }
        ]
    }
    (home / "workspace.yaml").write_text(yaml.safe_dump(workspace))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, default=6, help="N databases")
    parser.add_argument("--size-mb", type=int, default=20, help="each database's table, MB")
    parser.add_argument("--servers", type=int, default=2, help="S servers in the fleet file")
    parser.add_argument(
        "--limit", type=int, default=2, help="L: each server's max_concurrent_backups"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--server", default=DEFAULT_SERVER, help="postgresql:// URL, no dbname")
    parser.add_argument("--pgvault", default=str(REPO / ".venv" / "bin" / "pgvault"))
    parser.add_argument("--timeout-minutes", type=float, default=30)
    parser.add_argument("--workdir", default=None, help="parent of the temp dir (default: TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and databases")
    args = parser.parse_args(argv)
    for name in ("databases", "size_mb", "servers", "limit", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not os.access(args.pgvault, os.X_OK):
        parser.error(f"{args.pgvault} is not executable; install pgvault first")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = Server(args.server)
    work = Path(tempfile.mkdtemp(prefix="pgvault-bench-fleet-", dir=args.workdir))
    dbnames = [f"{PREFIX}{i}" for i in range(args.databases)]
    names = [f"db{i}" for i in range(args.databases)]
    tick: list[float] = []
    sequential: list[float] = []
    try:
        print(f"filling {args.databases} databases of ~{args.size_mb} MB …", flush=True)
        for dbname in dbnames:
            fill(server.recreate(dbname), args.size_mb)
        variables = write_fleet(work, args, dbnames)
        prepare_home(work)
        for round_ in range(args.rounds):
            order = ["tick", "sequential"] if round_ % 2 == 0 else ["sequential", "tick"]
            # A fresh Dagster database and stores: no run key or backup of a round is reused.
            env = base_env(work, variables, server.recreate(DAGSTER_DB))
            for contender in order:
                env["BACKUP_LOCAL_DIR"] = str(work / f"store-{contender}-{round_}")
                if contender == "tick":
                    seconds = one_tick(
                        work, env, len(names), args.pgvault, args.timeout_minutes * 60
                    )
                    tick.append(seconds)
                else:
                    seconds = one_after_another(env, names, args.pgvault)
                    sequential.append(seconds)
                print(f"  round {round_ + 1}: {contender:<11} {seconds:8.2f} s", flush=True)

        t, s = statistics.median(tick), statistics.median(sequential)
        print()
        print(
            f"{args.databases} databases x ~{args.size_mb} MB, {args.servers} servers x limit "
            f"{args.limit} ({min(args.databases, args.servers * args.limit)} dumps at once at most)"
        )
        print(f"{'one fleet tick (daemon)':<34} {t:8.2f} s  median of {len(tick)}")
        print(f"{'pgvault backup, one after another':<34} {s:8.2f} s  median of {len(sequential)}")
        print(f"{'tick / one after another':<34} {t / s:8.2f}")
    finally:
        if args.keep:
            print(f"kept {work} and databases {PREFIX}*")
        else:
            shutil.rmtree(work, ignore_errors=True)
            for dbname in [*dbnames, DAGSTER_DB]:
                server.drop(dbname)
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
