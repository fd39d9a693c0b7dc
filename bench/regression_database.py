"""PostgreSQL's own regression database through pgvault: backed up, restored over one and over
four loader sessions, and each restore compared with the source as a whole.

The `regression` database that `make installcheck` leaves behind holds nearly every kind of
object PostgreSQL has (and the odd ones pg_dump must order carefully): the widest test of
whether a restore that splits the dump over several sessions still rebuilds the same database.

One command, idempotent: the source tarball is downloaded once and checked, the regression
driver built once (both kept in --cache); each run starts its own private cluster on a free
loopback port, runs the parallel schedule there, and removes the cluster afterwards.

Usage: .venv/bin/python bench/regression_database.py [--cache DIR] [--loaders 1,4] [--keep-going]
Prints one line per comparison; exits 1 if any restore differs from its source.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests/dbcompare.py: the suite's snapshot of a whole database

from pgvault_assets.engine.postgres import shape  # noqa: E402
from pgvault_assets.engine.postgres.cluster import OS_USER, Cluster, start_cluster  # noqa: E402
from pgvault_assets.engine.postgres.compare import compare_databases  # noqa: E402
from pgvault_assets.settings import DatabaseUrl  # noqa: E402
from tests.dbcompare import database_snapshot  # noqa: E402

MAJOR = 15
POOL = f"http://deb.debian.org/debian/pool/main/p/postgresql-{MAJOR}/"
# Debian's source of the installed major; the regression SQL is the same across its minors.
PINNED_VERSION = "15.18"
PINNED_SHA256 = "11df0df97fe3ea4ba9a791faaf39cee1d2fe571e78885b5b55d8517d27c323b4"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "pgvault-regression-cache"
SOURCE = "regression"
STAGING = "regression_staging"
REFERENCE = "regression_psql"
# What a plain pg_dump says that no restore can keep: its own version line and the random
# key of \restrict (newer clients), which differs between any two dumps.
DUMP_NOISE = re.compile(rb"^(-- Dumped (from|by) .*|\\(un)?restrict .*)$", re.MULTILINE)


class Failed(Exception):
    """A step could not run; said in one line."""


def say(message: str) -> None:
    print(message, flush=True)


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, text=True, capture_output=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise Failed(f"{Path(command[0]).name} failed: {' | '.join(tail) or 'no output'}")
    return result  # type: ignore[no-any-return]


# -- the source tree --------------------------------------------------------------------------


def _download(url: str, to: Path) -> None:
    partial = to.with_suffix(to.suffix + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)
    partial.rename(to)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _newest_in_pool() -> tuple[str, str]:
    """The newest orig tarball of MAJOR in Debian's pool, and its sha256 from its .dsc."""
    with urllib.request.urlopen(POOL, timeout=60) as response:
        index = response.read().decode()
    versions = set(re.findall(rf"postgresql-{MAJOR}_({MAJOR}\.\d+)\.orig\.tar\.bz2", index))
    if not versions:
        raise Failed(f"no postgresql-{MAJOR} source tarball listed at {POOL}")
    version = max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))
    dscs = sorted(set(re.findall(rf"postgresql-{MAJOR}_{re.escape(version)}-[^\"<>]+\.dsc", index)))
    if not dscs:
        raise Failed(f"no .dsc for postgresql-{MAJOR} {version} at {POOL}")
    with urllib.request.urlopen(POOL + dscs[-1], timeout=60) as response:
        dsc = response.read().decode()
    tarball = f"postgresql-{MAJOR}_{version}.orig.tar.bz2"
    match = re.search(rf"^ ([0-9a-f]{{64}}) \d+ {re.escape(tarball)}$", dsc, re.MULTILINE)
    if not match:
        raise Failed(f"{dscs[-1]} lists no sha256 for {tarball}")
    return version, match.group(1)


def source_tree(cache: Path) -> Path:
    """The extracted source of MAJOR, downloaded and checked once."""
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o755)  # the server (another OS user) loads regress.so and reads data/ here
    version, sha256 = PINNED_VERSION, PINNED_SHA256
    tarball = cache / f"postgresql-{MAJOR}_{version}.orig.tar.bz2"
    if not tarball.exists():
        say(f"downloading {tarball.name}")
        try:
            _download(POOL + tarball.name, tarball)
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise Failed(f"could not download {tarball.name}: {error}") from None
            version, sha256 = _newest_in_pool()
            tarball = cache / f"postgresql-{MAJOR}_{version}.orig.tar.bz2"
            if not tarball.exists():
                _download(POOL + tarball.name, tarball)
        except urllib.error.URLError as error:
            raise Failed(f"could not download {tarball.name}: {error.reason}") from None
    if _sha256(tarball) != sha256:
        tarball.unlink()
        raise Failed(f"{tarball.name} does not match its sha256 (removed); run again")
    tree = cache / f"postgresql-{version}"
    if not (tree / "configure").exists():
        say(f"extracting {tarball.name}")
        run(
            [
                "tar",
                "--no-same-owner",
                "--no-same-permissions",
                "-xjf",
                str(tarball),
                "-C",
                str(cache),
            ]
        )
    return tree


def regression_driver(tree: Path) -> Path:
    """pg_regress with regress.so, refint.so and autoinc.so beside it, and the psql of the
    same release, built once. The tests' expected output is that psql's: a newer minor's
    psql reads the lines after a failed `COPY ... FROM stdin` differently, so whole files'
    worth of objects would go missing from the database."""
    regress, psql = tree / "src/test/regress", tree / "src/bin/psql/psql"
    built = [regress / "pg_regress", regress / "regress.so", regress / "autoinc.so", psql]
    if not all(path.exists() for path in built):
        say("building pg_regress, regress.so and psql (once, a few minutes)")
        if not (tree / "GNUmakefile").exists():
            run(
                ["./configure", "--without-icu", "--without-readline", "--without-zlib"],
                cwd=tree,
            )
        jobs = f"-j{os.cpu_count() or 2}"
        run(["make", "-C", "src/backend", "generated-headers"], cwd=tree)
        run(["make", jobs, "-C", "src/test/regress"], cwd=tree)
        run(["make", jobs, "-C", "src/bin/psql"], cwd=tree)
    return regress


# -- the private cluster ----------------------------------------------------------------------


def url_of(cluster: Cluster, dbname: str) -> str:
    return cluster.url.with_dbname(dbname).secret


def run_schedule(cluster: Cluster, regress: Path, outputs: Path, diffs: Path) -> None:
    """The parallel schedule against the cluster; leaves the `regression` database.

    Tests whose output differs from the expected (a minor version apart, a setting) still
    leave their objects: differences are reported, not fatal. The server writes some files
    into the output directory, so the cluster's OS user owns it."""
    results = outputs / "results"
    results.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        for path in (outputs, results):
            shutil.chown(path, OS_USER, OS_USER)
    env = {**os.environ, "PGPASSWORD": cluster.url.password or ""}
    for name in ("PGDATABASE", "PGUSER", "PGHOST", "PGPORT", "PGSERVICE"):
        env.pop(name, None)
    result = subprocess.run(
        [
            str(regress / "pg_regress"),
            f"--inputdir={regress}",
            f"--outputdir={outputs}",
            f"--bindir={regress.parents[1] / 'bin/psql'}",
            f"--dlpath={regress}",
            "--host=127.0.0.1",
            f"--port={cluster.port}",
            "--user=postgres",
            f"--schedule={regress / 'parallel_schedule'}",
            f"--dbname={SOURCE}",
        ],
        text=True,
        capture_output=True,
        env=env,
        check=False,
    )
    summary = [line for line in result.stdout.splitlines() if "tests" in line and "of" in line]
    failed = re.findall(r"(\S+)\s+\.\.\. FAILED", result.stdout)
    say(f"pg_regress: {summary[-1].strip(' =') if summary else result.stderr.strip()[-300:]}")
    if failed:
        shutil.copyfile(outputs / "regression.diffs", diffs)
        say(f"  differing from expected output (objects still created): {', '.join(failed)}")
        say(f"  (their differences: {diffs})")
    with psycopg.connect(url_of(cluster, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (SOURCE,)).fetchone()
    if not exists:
        raise Failed(f"pg_regress left no {SOURCE} database: {result.stderr.strip()[-300:]}")


# -- pgvault ----------------------------------------------------------------------------------


def pgvault_env(cluster: Cluster, home: Path) -> dict[str, str]:
    """The embedded default (local store and key under a fresh PGVAULT_HOME) and nothing from
    the caller's shell that would point pgvault elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BACKUP_", "RESTORE_", "PGVAULT_", "PITR_", "ALERT_"))
        and k not in {"DATABASE_URL", "STAGING_DATABASE_URL", "DAGSTER_HOME", "SENTRY_DSN"}
    }
    env.update(
        PGVAULT_HOME=str(home),
        DATABASE_URL=url_of(cluster, SOURCE),
        ENVIRONMENT_NAME="regression",
    )
    return env


def pgvault(args: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    run([str(REPO / ".venv/bin/pgvault"), *args], env=env)
    return time.monotonic() - started


def recreate(cluster: Cluster, dbname: str) -> None:
    with psycopg.connect(url_of(cluster, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


# -- the comparisons --------------------------------------------------------------------------


def plain_dump(cluster: Cluster, dbname: str, *, raw: bool = False) -> bytes:
    dump = subprocess.run(
        [str(cluster.bindir / "pg_dump"), "--no-password", "-d", url_of(cluster, dbname)],
        capture_output=True,
        check=False,
    )
    if dump.returncode != 0:
        raise Failed(f"pg_dump of {dbname} failed: {dump.stderr.decode(errors='replace')[-300:]}")
    return dump.stdout if raw else rows_sorted(DUMP_NOISE.sub(b"", dump.stdout))


def rows_sorted(dump: bytes) -> bytes:
    """Each table's rows in sorted order: their order on disk is not the database's content
    (a restore loads each table in the order of its COPY, but tables loaded side by side, or
    rows moved by a later statement, settle differently)."""
    out: list[bytes] = []
    rows: list[bytes] | None = None
    for line in dump.split(b"\n"):
        if rows is not None:
            if line == b"\\.":
                out += sorted(rows)
                rows = None
            else:
                rows.append(line)
                continue
        elif line.startswith(b"COPY ") and line.endswith(b"FROM stdin;"):
            rows = []
        out.append(line)
    return b"\n".join(out)


def dump_difference(left: bytes, right: bytes) -> list[str]:
    diff = difflib.unified_diff(
        left.decode(errors="replace").splitlines(),
        right.decode(errors="replace").splitlines(),
        lineterm="",
        n=0,
    )
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def snapshot_difference(left: dict[str, Any], right: dict[str, Any]) -> list[str]:
    found = []
    for key in sorted(k for k in set(left) | set(right) if left.get(k) != right.get(k)):
        a, b = left.get(key), right.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += [f"{key} {k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            found.append(key)
    return found


@dataclass(frozen=True)
class Picture:
    """A database as each of the three comparisons sees it."""

    url: str
    snapshot: dict[str, Any]
    dump: bytes


def picture(cluster: Cluster, dbname: str) -> Picture:
    url = url_of(cluster, dbname)
    return Picture(url, database_snapshot(url), plain_dump(cluster, dbname))


def differences(left: Picture, right: Picture) -> dict[str, list[str]]:
    """What each comparison finds different between two databases."""
    whole = compare_databases(DatabaseUrl(left.url), DatabaseUrl(right.url))
    return {
        "whole-database comparison (engine/postgres/compare.py)": [
            str(d) for d in whole.sections if shape.matters(d)
        ]
        + [t.table for t in whole.differing],
        "database snapshot (tests/dbcompare.py)": snapshot_difference(
            left.snapshot, right.snapshot
        ),
        "pg_dump of both": dump_difference(left.dump, right.dump),
    }


def summary(found: list[str]) -> str:
    shown = ", ".join(found[:6])[:300]
    return f"{len(found)} differ: {shown}{' ...' if len(found) > 6 else ''}"


def compare(label: str, restored: Picture, source: Picture, expected: dict[str, list[str]]) -> bool:
    """One line per comparison with the source: the restore may differ from it only where
    `psql < dump` of the same source does."""
    same = True
    for method, found in differences(source, restored).items():
        beyond = [f for f in found if f not in expected[method]]
        if beyond:
            verdict = f"DIFFERENT beyond psql < dump: {summary(beyond)}"
            same = False
        elif found:
            verdict = (
                f"same but where psql < dump differs too ({len(found)} of {len(expected[method])})"
            )
        else:
            verdict = "same"
        say(f"{label} vs source, {method}: {verdict}")
    return same


def identical(label: str, one: Picture, other: Picture) -> bool:
    same = True
    for method, found in differences(one, other).items():
        say(f"{label}, {method}: {'DIFFERENT ' + summary(found) if found else 'same'}")
        same &= not found
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"where the source tarball and the build stay (default {DEFAULT_CACHE})",
    )
    parser.add_argument(
        "--loaders",
        default="1,4",
        help="RESTORE_PARALLEL_LOADERS values to restore with (default 1,4)",
    )
    args = parser.parse_args()
    loaders = [int(n) for n in args.loaders.split(",")]
    started = time.monotonic()
    try:
        regress = regression_driver(source_tree(args.cache.resolve()))
        with (
            tempfile.TemporaryDirectory(prefix="pgvault-regression-") as work,
            start_cluster() as cluster,
        ):
            major = re.search(r"(\d+)", cluster.bindir.parent.name)
            if major is None or int(major.group(1)) != MAJOR:
                raise Failed(f"the installed server is not PostgreSQL {MAJOR} ({cluster.bindir})")
            outputs = cluster.base / "pg_regress"  # the server writes files there
            outputs.mkdir()
            schedule_started = time.monotonic()
            run_schedule(cluster, regress, outputs, args.cache.resolve() / "regression.diffs")
            say(f"regression database built in {time.monotonic() - schedule_started:.0f} s")

            env = pgvault_env(cluster, Path(work) / "home")
            day = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
            seconds = pgvault(["backup", "--date", day, "--retries", "0"], env)
            say(f"pgvault backup of {SOURCE}: {seconds:.1f} s")
            source = picture(cluster, SOURCE)
            # What a plain dump cannot carry (inherited columns' order, say) is lost by any
            # restore of it: `psql < dump` of the same source shows what that is.
            recreate(cluster, REFERENCE)
            run(
                [
                    str(cluster.bindir / "psql"),
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    url_of(cluster, REFERENCE),
                ],
                input=plain_dump(cluster, SOURCE, raw=True).decode(),
            )
            reference = picture(cluster, REFERENCE)
            expected = differences(source, reference)
            for method, found in expected.items():
                say(f"psql < dump  vs source, {method}: {summary(found) if found else 'same'}")

            all_same = True
            restores: dict[int, Picture] = {}
            for n in loaders:
                staging = f"{STAGING}_{n}"
                recreate(cluster, staging)
                restore = ["restore-from-backup", "--date", day, "--target", "staging"]
                seconds = pgvault(
                    [*restore, "--skip-confirmation"],
                    {
                        **env,
                        "RESTORE_PARALLEL_LOADERS": str(n),
                        "STAGING_DATABASE_URL": url_of(cluster, staging),
                    },
                )
                say(f"loaders={n}  pgvault restore-from-backup --target staging: {seconds:.1f} s")
                restores[n] = picture(cluster, staging)
                all_same &= compare(f"loaders={n}", restores[n], source, expected)
            serial = restores.get(1)
            for n, restored in restores.items():
                if serial is not None and n != 1:
                    all_same &= identical(f"loaders={n} vs loaders=1", restored, serial)
    except Failed as error:
        say(f"error: {error}")
        return 2
    say(
        f"{'every restore identical to the serial one, and to the source but where psql < dump differs too' if all_same else 'DIFFERENCES FOUND'} "
        f"({time.monotonic() - started:.0f} s in all)"
    )
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
