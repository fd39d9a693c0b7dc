"""Time pgvault's backup and restore against the plain shell pipelines they replace.

Rounds are interleaved (pgvault, gzip pipeline, bare dump, then again...) so drift in the
machine's load or page cache hits every contender alike. Run bench/make_dataset.py first.

Usage: .venv/bin/python bench/bench_backup.py [--runs 3] [--gzip-runs 1] [--no-restore]
       [--only-baselines] [--restore-only] [--loaders 1,2,4] [--dbname pgvault_bench_many]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from benchlib import environ_without_pgvault
from isal import isal_zlib
from psycopg import sql

from pgvault_assets.engine.basics.names import object_key
from pgvault_assets.engine.vault.crypto import SDK
from pgvault_assets.engine.vault.keys import LocalKeyProvider
from pgvault_assets.settings import default_restore_loaders

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_DBNAME = "pgvault_bench"
# pgvault's staging target (plus its siblings) and gunzip | psql's target: `<dbname>_restore`
# and `<dbname>_baseline`, so two benchmarks on one server, each with its --dbname, never meet.
RESTORE_SUFFIX = "_restore"
BASELINE_SUFFIX = "_baseline"
POLL_SECONDS = 0.05
# Client tools whose memory is not pgvault's: the goal is about pgvault's own Python process.
NOT_PGVAULT = {"pg_dump", "pg_restore", "psql", "pg_wrapper", "gzip", "gunzip", "sh", "bash"}
GOALS = {  # ratio name -> upper bound
    "backup / bare dump": 1.30,
    "stored size / gzip -6 size": 1.10,
    "backup peak RSS (MB)": 256.0,
    "restore peak RSS (MB)": 512.0,
}
# A verified restore with the default number of sessions against `gunzip | psql`, by layout
# (bench/make_dataset.py's marker): one big table, or many tables with keys and indexes.
RESTORE_GOALS = {"documents": 1.00, "many-tables": 0.80}


@dataclass
class Series:
    """Repeated measurements of one contender."""

    label: str
    seconds: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    peak_rss: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    """CPU seconds of pgvault's own process (or of the whole baseline pipeline)."""
    child_cpu: list[float] = field(default_factory=list)
    """CPU seconds of the client tools pgvault ran and waited for (psql, pg_dump)."""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


# --- process helpers -------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, from every thread's children list."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        found.extend(int(child) for child in text.split())
    return found


def _name_and_hwm(pid: int) -> tuple[str, int] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    name, hwm = "", 0
    for line in status.splitlines():
        if line.startswith("Name:"):
            name = line.split(None, 1)[1].strip() if len(line.split()) > 1 else ""
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return name, hwm


def python_peak_rss(root: int, peak: int) -> int:
    """Raise `peak` to the highest VmHWM of pgvault's process tree, client tools excluded."""
    pending = [root]
    while pending:
        pid = pending.pop()
        pending.extend(_children(pid))
        sample = _name_and_hwm(pid)
        if sample and sample[0] not in NOT_PGVAULT:
            peak = max(peak, sample[1])
    return peak


@dataclass(frozen=True)
class Usage:
    """What one pgvault run cost: wall seconds, peak RSS, and CPU seconds of its own process
    and of the client tools it waited for. CPU seconds hold on a shared machine, where wall
    time mostly measures the neighbours."""

    seconds: float
    peak_rss: int
    cpu: float
    child_cpu: float


def _cpu_of_exited(pid: int) -> tuple[float, float]:
    """(own, waited-for children's) CPU seconds of an exited, not yet reaped process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    tick = os.sysconf("SC_CLK_TCK")
    return (utime + stime) / tick, (cutime + cstime) / tick


def run_pgvault(args: list[str], env: dict[str, str]) -> Usage:
    """Run pgvault; return what it cost."""
    started = time.perf_counter()
    with subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        # Drain output on a side thread so a chatty pgvault never blocks on a full pipe.
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(proc.stdout or []), daemon=True)
        reader.start()
        peak = 0
        # Wait without reaping, so /proc still holds the exited process's CPU times.
        flags = os.WEXITED | os.WNOWAIT | os.WNOHANG
        while os.waitid(os.P_PID, proc.pid, flags) is None:
            peak = python_peak_rss(proc.pid, peak)
            time.sleep(POLL_SECONDS)
        elapsed = time.perf_counter() - started
        cpu, child_cpu = _cpu_of_exited(proc.pid)
        proc.wait()
        reader.join()
    if proc.returncode != 0:
        tail = "".join(output[-40:])
        raise SystemExit(f"{shlex.join(args)} failed with exit code {proc.returncode}:\n{tail}")
    return Usage(elapsed, peak, cpu, child_cpu)


def run_shell(command: str, cpu: list[float] | None = None) -> float:
    """Run a pipeline under bash with pipefail; return its wall-clock seconds, and append the
    CPU seconds of all its processes to `cpu`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{command!r} failed with exit code {result.returncode}:\n{result.stderr}")
    if cpu is not None:
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return elapsed


def tree_size(path: Path) -> int:
    # Count each inode once: the local store keeps versions as hard links, not copies.
    sizes = {
        (st.st_dev, st.st_ino): st.st_size
        for p in path.rglob("*")
        if p.is_file()
        for st in [p.stat()]
    }
    return sum(sizes.values())


# --- databases -------------------------------------------------------------------------------


class Server:
    """Maintenance connection for creating and dropping the benchmark's scratch databases."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = psycopg.connect(f"{url}/postgres", autocommit=True, connect_timeout=5)

    def exists(self, name: str) -> bool:
        query = "SELECT 1 FROM pg_database WHERE datname = %s"
        return self.conn.execute(query, [name]).fetchone() is not None

    def drop_family(self, name: str) -> None:
        """Drop `name` and every database whose name starts with it (restore siblings)."""
        rows = self.conn.execute(
            "SELECT datname FROM pg_database WHERE datname::text ^@ %s", [name]
        ).fetchall()
        for (datname,) in rows:
            self.conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(datname))
            )

    def layout(self, name: str) -> str:
        """The dataset's layout from make_dataset.py's marker: documents or many-tables."""
        row = self.conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            [name],
        ).fetchone()
        try:
            return (
                str(json.loads(row[0]).get("layout", "documents"))
                if row and row[0]
                else "documents"
            )
        except ValueError:
            return "documents"

    def recreate(self, name: str) -> None:
        self.drop_family(name)
        self.conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def close(self) -> None:
        self.conn.close()


# --- the benchmark ---------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    server: Server
    work: Path
    source_url: str
    restore_url: str
    baseline_url: str
    gz_file: Path
    last_store: Path | None = None
    stored_gz: Path | None = None
    dump_bytes: int = 0
    """The plain dump's size, for CPU seconds per GB of it."""
    import_cpu: float = 0.0
    """CPU seconds of `pgvault --help`: what every command pays before its first byte."""

    @property
    def restore_name(self) -> str:
        return self.args.dbname + RESTORE_SUFFIX

    @property
    def baseline_name(self) -> str:
        return self.args.dbname + BASELINE_SUFFIX

    def pgvault_env(self, store: Path) -> dict[str, str]:
        env = environ_without_pgvault()
        env.update(
            DATABASE_URL=self.source_url,
            STAGING_DATABASE_URL=self.restore_url,
            BACKUP_LOCAL_DIR=str(store),
            BACKUP_LOCAL_KEY_FILE=str(self.work / "key" / "backup.key"),
            DAGSTER_HOME=str(self.work / "dagster_home"),
            ENVIRONMENT_NAME="bench",
        )
        return env


def warm_up(ctx: Context) -> None:
    """Open the Dagster instance once, untimed: a daily backup never creates its SQLite storage."""
    subprocess.run(
        [ctx.args.pgvault, "status"],
        env=ctx.pgvault_env(ctx.work / "store-warm-up"),
        capture_output=True,
        check=False,  # no backups yet: status reports that, as it should
    )
    shutil.rmtree(ctx.work / "store-warm-up", ignore_errors=True)


def pgvault_backup(ctx: Context, series: Series, run: int) -> None:
    store = ctx.work / f"store-{run}"
    usage = run_pgvault([ctx.args.pgvault, "backup"], ctx.pgvault_env(store))
    series.seconds.append(usage.seconds)
    series.sizes.append(tree_size(store))
    series.peak_rss.append(usage.peak_rss)
    if ctx.last_store is not None:  # keep only the newest store, for the restore runs
        shutil.rmtree(ctx.last_store, ignore_errors=True)
    ctx.last_store = store


def gzip_pipeline(ctx: Context, series: Series, run: int) -> None:
    source, target = shlex.quote(ctx.source_url), shlex.quote(str(ctx.gz_file))
    series.seconds.append(run_shell(f"pg_dump -d {source} | gzip -6 > {target}"))
    series.sizes.append(ctx.gz_file.stat().st_size)


def bare_dump(ctx: Context, series: Series, run: int) -> None:
    series.seconds.append(run_shell(f"pg_dump -d {shlex.quote(ctx.source_url)} > /dev/null"))


def pgvault_restore(loaders: int) -> Step:
    """A verified restore over `loaders` psql sessions."""

    def restore(ctx: Context, series: Series, run: int) -> None:
        assert ctx.last_store is not None, "no pgvault backup to restore"
        env = ctx.pgvault_env(ctx.last_store)
        env["RESTORE_PARALLEL_LOADERS"] = str(loaders)
        timed_restore(ctx, series, env)

    return restore


def timed_restore(ctx: Context, series: Series, env: dict[str, str]) -> None:
    ctx.server.recreate(ctx.restore_name)  # a staging database exists; its swap-out is timed
    command = [
        ctx.args.pgvault,
        "restore-from-backup",
        "--date",
        ctx.args.restore_date,
        "--target",
        "staging",
        "--verify",
        "--skip-confirmation",
    ]
    usage = run_pgvault(command, env)
    series.seconds.append(usage.seconds)
    series.peak_rss.append(usage.peak_rss)
    series.cpu.append(usage.cpu)
    series.child_cpu.append(usage.child_cpu)


def export_stored_gzip(ctx: Context) -> Path:
    """The gzip stream pgvault stored, decrypted once and untimed: `gunzip | psql` then loads
    the very dump pgvault restores, so the ratio compares the pipelines, not two dumps.
    Sets `ctx.dump_bytes` to the plain dump's size."""
    assert ctx.last_store is not None, "no pgvault backup to export"
    encrypted = ctx.last_store / object_key("bench", dt.date.fromisoformat(ctx.args.restore_date))
    keys = LocalKeyProvider(ctx.work / "key" / "backup.key")
    out = ctx.work / "stored.sql.gz"
    with open(encrypted, "rb") as source, open(out, "wb") as sink:
        decryptor = SDK.stream(mode="d", source=source, key_provider=keys.master_key_provider())
        gunzip = isal_zlib.decompressobj(31)
        while chunk := decryptor.read(4 * 1024 * 1024):
            sink.write(chunk)
            ctx.dump_bytes += len(gunzip.decompress(chunk))
    return out


def gunzip_psql(ctx: Context, series: Series, run: int) -> None:
    ctx.server.recreate(ctx.baseline_name)  # outside the timing
    dump = ctx.stored_gz or ctx.gz_file
    gz, target = shlex.quote(str(dump)), shlex.quote(ctx.baseline_url)
    series.seconds.append(
        run_shell(
            f"gunzip -c {gz} | psql -X -q -v ON_ERROR_STOP=1 -d {target} > /dev/null", series.cpu
        )
    )


Step = Callable[[Context, Series, int], None]


def at_most(runs: int, step: Step) -> Step:
    """`step` for its first `runs` rounds only (gzip -6's size never changes between rounds)."""

    def limited(ctx: Context, series: Series, run: int) -> None:
        if len(series.seconds) < runs:
            step(ctx, series, run)

    return limited


def interleave(ctx: Context, steps: list[tuple[Series, Step]]) -> None:
    """Run every step `--runs` times, rotating the order each round."""
    for run in range(ctx.args.runs):
        shift = run % len(steps)
        for series, step in steps[shift:] + steps[:shift]:
            before = len(series.seconds)
            step(ctx, series, run)
            if len(series.seconds) == before:
                continue
            print(f"  round {run + 1}: {series.label:<28} {series.seconds[-1]:8.2f} s", flush=True)


def import_cpu(ctx: Context) -> float:
    """Median CPU seconds of three `pgvault --help`: the imports every restore pays first."""
    env = ctx.pgvault_env(ctx.work / "store-help")
    return statistics.median(run_pgvault([ctx.args.pgvault, "--help"], env).cpu for _ in range(3))


def report_cpu(results: dict[str, Series], dump_bytes: int, fixed: float) -> None:
    """CPU seconds per GB of plain dump, medians: pgvault's own process (decrypting,
    decompressing, hashing, splitting the dump) and the psql sessions it feeds, beside the
    gunzip and psql of the baseline. They hold on a busy machine, where wall ratios drift."""
    rows = [(k, s) for k, s in results.items() if s.cpu]
    if not rows or not dump_bytes:
        return
    gb = dump_bytes / 1e9
    print()
    print(f"CPU seconds per GB of plain dump ({dump_bytes / 1e9:.2f} GB)")
    print(f"(pgvault's own includes {fixed:.2f} s of imports, `pgvault --help`'s CPU)")
    print(f"{'contender':<28} {'own':>9} {'psql':>9} {'total':>9}")
    for key, series in rows:
        own = statistics.median(series.cpu) / gb
        if key.startswith("restore_"):
            psql = statistics.median(series.child_cpu) / gb
            print(f"{series.label:<28} {own:>9.2f} {psql:>9.2f} {own + psql:>9.2f}")
        else:
            print(f"{series.label:<28} {'':>9} {'':>9} {own:>9.2f}")


def report(results: dict[str, Series], layout: str, default_loaders: int) -> None:
    mb = 1024 * 1024
    print()
    print(f"{'contender':<28} {'median s':>9}   runs")
    for series in results.values():
        runs = " ".join(f"{s:.2f}" for s in series.seconds)
        print(f"{series.label:<28} {series.median:>9.2f}   {runs}")

    sizes = {k: statistics.median(s.sizes) for k, s in results.items() if s.sizes}
    if sizes:
        print()
        for key, size in sizes.items():
            print(f"{results[key].label + ' size':<28} {size / mb:>9.1f} MB")

    ratios: dict[str, float] = {}
    if "backup" in results:
        ratios["backup / bare dump"] = results["backup"].median / results["bare"].median
        # Each round's pair ran back to back: their ratio shrugs off drift between rounds.
        ratios["  same-round pairs, median"] = statistics.median(
            b / d for b, d in zip(results["backup"].seconds, results["bare"].seconds, strict=True)
        )
        ratios["backup / gzip pipeline"] = results["backup"].median / results["gzip"].median
        ratios["stored size / gzip -6 size"] = sizes["backup"] / sizes["gzip"]
    elif "gzip" in results:
        ratios["gzip pipeline / bare dump"] = results["gzip"].median / results["bare"].median
    goals = dict(GOALS)
    for key, series in results.items():
        if key.startswith("restore_"):
            # On the same dump: gunzip | psql loads the gzip stream pgvault stored.
            loaders = int(key.removeprefix("restore_"))
            name = f"restore N={loaders} / (gunzip | psql)"
            ratios[name] = series.median / results["gunzip_psql"].median
            if loaders == default_loaders:
                goals[name] = RESTORE_GOALS.get(layout, 1.00)
    for stage in ("backup", "restore"):
        peaks = [p for k, s in results.items() if k.startswith(stage) for p in s.peak_rss]
        if peaks:
            ratios[f"{stage} peak RSS (MB)"] = max(peaks) / mb

    print()
    print(f"{'measure':<28} {'value':>9}   {'goal':>7}")
    for name, value in ratios.items():
        goal = goals.get(name)
        verdict = "" if goal is None else ("ok" if value <= goal else "MISSED")
        goal_text = "" if goal is None else f"<= {goal:g}"
        print(f"{name:<28} {value:>9.2f}   {goal_text:>7}  {verdict}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--gzip-runs",
        type=int,
        default=None,
        help="time pg_dump | gzip -6 only this often (default: --runs); its size is the same each time",
    )
    parser.add_argument("--no-restore", action="store_true", help="skip the restore rounds")
    parser.add_argument(
        "--loaders",
        default="1,2,4",
        help="restore with each of these numbers of psql sessions (RESTORE_PARALLEL_LOADERS)",
    )
    parser.add_argument("--only-baselines", action="store_true", help="skip pgvault itself")
    parser.add_argument(
        "--restore-only",
        action="store_true",
        help="time only the restores, from one untimed backup",
    )
    parser.add_argument("--server", default=DEFAULT_SERVER, help="postgresql:// URL, no dbname")
    parser.add_argument("--dbname", default=DEFAULT_DBNAME)
    parser.add_argument("--pgvault", default=str(REPO / ".venv" / "bin" / "pgvault"))
    parser.add_argument("--restore-date", default=yesterday, help="default: yesterday (UTC)")
    parser.add_argument("--workdir", default=None, help="parent of the temp dir (default: TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and databases")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        args.loaders = sorted({int(n) for n in args.loaders.split(",")})
    except ValueError:
        parser.error("--loaders must be numbers separated by commas, like 1,2,4")
    if not all(1 <= n <= 16 for n in args.loaders):
        parser.error("--loaders must each be from 1 to 16")
    if args.gzip_runs is None:
        args.gzip_runs = args.runs
    if not 1 <= args.gzip_runs <= args.runs:
        parser.error("--gzip-runs must be between 1 and --runs")
    if args.restore_only and (args.only_baselines or args.no_restore):
        parser.error("--restore-only needs pgvault and the restore rounds")
    if not args.only_baselines and not os.access(args.pgvault, os.X_OK):
        parser.error(f"{args.pgvault} is not executable; install pgvault or use --only-baselines")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = Server(args.server)
    if not server.exists(args.dbname):
        server.close()
        print(f"{args.dbname} does not exist; run bench/make_dataset.py first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pgvault-bench-", dir=args.workdir))
    (work / "dagster_home").mkdir()
    ctx = Context(
        args=args,
        server=server,
        work=work,
        source_url=f"{args.server}/{args.dbname}",
        restore_url=f"{args.server}/{args.dbname}{RESTORE_SUFFIX}",
        baseline_url=f"{args.server}/{args.dbname}{BASELINE_SUFFIX}",
        gz_file=work / "dump.sql.gz",
    )
    results: dict[str, Series] = {}

    def series(key: str, label: str) -> Series:
        return results.setdefault(key, Series(label))

    try:
        if args.restore_only:
            print(f"backup: one untimed pgvault backup of {args.dbname}", flush=True)
            warm_up(ctx)
            pgvault_backup(ctx, Series("untimed backup"), 0)
        else:
            print(f"backup: {args.runs} interleaved rounds against {args.dbname}", flush=True)
            backup_steps: list[tuple[Series, Step]] = []
            if not args.only_baselines:
                warm_up(ctx)
                backup_steps.append((series("backup", "pgvault backup"), pgvault_backup))
            backup_steps.append(
                (series("gzip", "pg_dump | gzip -6"), at_most(args.gzip_runs, gzip_pipeline))
            )
            backup_steps.append((series("bare", "pg_dump > /dev/null"), bare_dump))
            interleave(ctx, backup_steps)

        if not args.no_restore:
            print(f"restore: {args.runs} interleaved rounds", flush=True)
            restore_steps: list[tuple[Series, Step]] = []
            if not args.only_baselines:
                ctx.stored_gz = export_stored_gzip(ctx)
                ctx.import_cpu = import_cpu(ctx)
                for loaders in args.loaders:
                    label = f"pgvault restore N={loaders}"
                    restore_steps.append(
                        (series(f"restore_{loaders}", label), pgvault_restore(loaders))
                    )
            restore_steps.append((series("gunzip_psql", "gunzip | psql"), gunzip_psql))
            interleave(ctx, restore_steps)

        report(results, server.layout(args.dbname), default_restore_loaders())
        report_cpu(results, ctx.dump_bytes, ctx.import_cpu)
    finally:
        if args.keep:
            print(f"kept {work} and databases {ctx.restore_name}*, {ctx.baseline_name}*")
        else:
            shutil.rmtree(work, ignore_errors=True)
            server.drop_family(ctx.restore_name)
            server.drop_family(ctx.baseline_name)
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
