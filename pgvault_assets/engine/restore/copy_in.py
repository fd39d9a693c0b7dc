"""Copy a recovered cluster's database (point-in-time recovery) in by the checked swap."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field

from pgvault_assets.engine.basics.clock import Clock, utcnow
from pgvault_assets.engine.basics.interrupts import CHILD_GROUP
from pgvault_assets.engine.basics.names import database_beside
from pgvault_assets.engine.postgres.postgres import (
    check_tool_fits_server,
    connect,
    database_exists,
    server_version,
    table_row_counts,
    tool_env,
    tool_reason,
)
from pgvault_assets.engine.restore.provision import create_scratch
from pgvault_assets.engine.restore.swap import (
    claimed_target,
    connection_loss_keeps,
    drop_scratch,
    free_stamp,
    swap_databases,
)
from pgvault_assets.engine.restore.verify import compare_counts
from pgvault_assets.errors import RestoreFailed
from pgvault_assets.settings import DatabaseUrl


@dataclass(frozen=True)
class CopyResult:
    """A database copied from another server into `target` by the checked swap."""

    target: str
    previous: str | None
    table_rows: dict[str, int]
    stage_seconds: dict[str, float] = field(default_factory=dict)


def _copy_with_pg_dump(source: DatabaseUrl, scratch: DatabaseUrl, major: int) -> None:
    """pg_dump of `source` piped into psql on `scratch`; the first error stops both."""
    pg_dump, _ = check_tool_fits_server("pg_dump", major)
    psql, _ = check_tool_fits_server("psql", major)
    dump = subprocess.Popen(
        [pg_dump, "--no-password", "--no-owner", "--no-privileges", "--format=plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=tool_env(source),
        **CHILD_GROUP,
    )
    try:
        load = subprocess.run(
            [psql, "--no-password", "--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1"],
            stdin=dump.stdout,
            capture_output=True,
            env=tool_env(scratch),
            check=False,
            **CHILD_GROUP,
        )
    except BaseException:  # interrupted: run() ended psql, and pg_dump ends here
        dump.kill()
        dump.wait()
        raise
    if dump.stdout is not None:
        dump.stdout.close()
    if load.returncode != 0 and dump.poll() is None:
        dump.kill()
    dump_errors = dump.stderr.read().decode(errors="replace") if dump.stderr else ""
    code = dump.wait()
    if code != 0:
        raise RestoreFailed(
            f"pg_dump of the recovered database failed ({tool_reason(dump_errors.splitlines(), 'no message')})"
        )
    if load.returncode != 0:
        reason = tool_reason(load.stderr.decode(errors="replace").splitlines(), "no message")
        raise RestoreFailed(f"psql failed while loading the recovered database ({reason})")


def copy_database(
    source: DatabaseUrl, target_url: DatabaseUrl, *, now: Clock = utcnow
) -> CopyResult:
    """Copy `source` (a recovered cluster's database) into `target_url` by the checked swap.

    The copy goes into a scratch database beside the target; only when its row counts equal
    the source's is it renamed into place, the old target kept for rollback, exactly as a
    restore from a dump. Objects are owned by the restoring role (the copy carries no owners
    or grants: the recovered cluster's roles need not exist on the target's server).
    """
    stages: dict[str, float] = {}
    target = target_url.dbname
    maintenance_url = target_url.with_dbname("postgres")
    with (
        connection_loss_keeps(target),
        claimed_target(maintenance_url, target) as (maintenance, _),
        connect(source) as origin,
    ):
        stamp = free_stamp(maintenance, target, ("restore", "pre_restore"), now())
        scratch = database_beside(target, "restore", stamp)
        keep_as = database_beside(target, "pre_restore", stamp)
        major, _ = server_version(maintenance)
        expected = table_row_counts(origin)
        try:
            create_scratch(maintenance, scratch, None)
            started = time.perf_counter()
            _copy_with_pg_dump(source, target_url.with_dbname(scratch), major)
            stages["restore"] = round(time.perf_counter() - started, 3)
            with connect(target_url.with_dbname(scratch)) as restored:
                restored.execute("ANALYZE")
                problems = compare_counts(expected, table_row_counts(restored))
            if problems:
                raise RestoreFailed(
                    "copied row counts differ from the recovered database: "
                    + "; ".join(problems[:5])
                )
            started = time.perf_counter()
            had_target = database_exists(maintenance, target)
            swap_databases(maintenance, target, scratch, keep_as if had_target else None)
            stages["swap"] = round(time.perf_counter() - started, 3)
        except BaseException:
            drop_scratch(maintenance, maintenance_url, scratch)
            raise
    return CopyResult(target, keep_as if had_target else None, expected, stages)
