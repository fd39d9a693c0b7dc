"""`restore-to-time` interrupted while its recovered cluster is copied into staging."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgvault_assets.engine.postgres.cluster import CLUSTER_PREFIX
from tests.test_faults.test_interrupted import cli  # noqa: F401 (shared fixture)
from tests.test_faults.test_killed import _scratches
from tests.test_pitr.conftest import ArchivingServer
from tests.test_pitr.test_recover_to_time import staging_rows


@pytest.fixture
def own_cluster_dir() -> Iterator[Path]:
    """The command's TMPDIR, so the throwaway clusters found there are this test's only."""
    path = Path(tempfile.mkdtemp(prefix="pgv-", dir="/tmp"))  # short: sockets live below
    path.chmod(0o755)  # the clusters run as the postgres OS user
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_restore_to_time_interrupted_removes_its_cluster_and_leaves_staging(
    pitr_server: ArchivingServer,
    cli,  # noqa: F811 (the fixture imported above)
    own_cluster_dir: Path,
) -> None:
    with psycopg.connect(os.environ["STAGING_DATABASE_URL"], autocommit=True) as staging:
        staging.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        staging.execute("INSERT INTO orders VALUES (42)")
    pitr_server.sql("CREATE TABLE orders (id int PRIMARY KEY)")
    pitr_server.sql("INSERT INTO orders SELECT generate_series(1, 5)")
    target = pitr_server.now()
    pitr_server.sql("INSERT INTO orders VALUES (6)")
    pitr_server.switch_and_wait()
    clusters = own_cluster_dir
    child = cli(
        "restore-to-time",
        "--time",
        target.isoformat(),
        "--target",
        "staging",
        pause_at="swap",
        TMPDIR=str(clusters),
    )
    child.wait_for_pause("swap")  # the recovered cluster is up, its copy about to swap in
    assert list(clusters.glob(f"{CLUSTER_PREFIX}*")), "no throwaway cluster at the pause"
    assert _scratches(os.environ["STAGING_DATABASE_URL"]), "no copy being built at the pause"

    code, lines = child.interrupt(signal.SIGINT)

    assert code == 130
    (line,) = lines
    assert line.startswith("error: restore of ") and " interrupted: the throwaway cluster" in line
    assert line.endswith("is as it was (SIGINT)")
    assert list(clusters.glob(f"{CLUSTER_PREFIX}*")) == []
    assert staging_rows() == [42]
    assert _scratches(os.environ["STAGING_DATABASE_URL"]) == []
