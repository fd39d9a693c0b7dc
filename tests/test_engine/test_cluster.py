"""Throwaway clusters: started private, reachable, always removed, a killed run's swept up."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from itertools import pairwise
from pathlib import Path

import psycopg
import pytest

from pgvault_assets.engine.postgres.cluster import (
    CLUSTER_PREFIX,
    major_of,
    one_proof_at_a_time,
    remove_leftover_clusters,
    server_bindir,
    start_cluster,
    throwaway_cluster,
)
from pgvault_assets.errors import ConfigError

REPO = Path(__file__).parents[2]
# How the engine creates a cluster is what these tests look at: no copied template here.
pytestmark = pytest.mark.real_initdb


def _postmaster_pid(base: Path) -> int:
    return int((base / "data" / "postmaster.pid").read_text().split()[0])


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_throwaway_cluster_accepts_a_connection_on_loopback_and_is_removed_afterwards():
    with start_cluster() as cluster:
        assert cluster.base.name.startswith(CLUSTER_PREFIX)
        pid = _postmaster_pid(cluster.base)
        with psycopg.connect(cluster.url.secret, connect_timeout=5) as conn:
            listen, socket_dir = conn.execute(
                "SELECT current_setting('listen_addresses'), "
                "current_setting('unix_socket_directories')"
            ).fetchone()
        assert listen == "127.0.0.1"
        assert socket_dir == str(cluster.base)
        # No trust: another local user cannot read what a proof restores.
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres")
        assert str(cluster.url) == f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    assert not cluster.base.exists()
    assert not cluster.base.with_suffix(".lock").exists()
    assert not _alive(pid)


def test_the_cluster_is_removed_even_when_the_body_raises():
    with pytest.raises(RuntimeError), throwaway_cluster() as url:
        with psycopg.connect(url.secret, connect_timeout=5) as conn:
            (port,) = conn.execute("SELECT current_setting('port')::int").fetchone()
            (data,) = conn.execute("SELECT current_setting('data_directory')").fetchone()
        raise RuntimeError("the proof failed")
    assert not Path(data).parent.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2)


def test_a_killed_runs_cluster_is_stopped_and_removed_by_the_next_run():
    code = (
        "import time\n"
        "from pgvault_assets.engine.postgres.cluster import start_cluster\n"
        "with start_cluster() as cluster:\n"
        "    print(cluster.base, flush=True)\n"
        "    time.sleep(600)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        base = Path(child.stdout.readline().strip())
    finally:
        child.kill()
        child.wait(30)
    pid = _postmaster_pid(base)
    assert base.is_dir() and _alive(pid)  # SIGKILL ran no finally: the server outlived it

    removed = remove_leftover_clusters()

    assert base in removed
    assert not base.exists()
    assert not base.with_suffix(".lock").exists()
    assert not _alive(pid)


def test_a_live_runs_cluster_is_left_alone_by_another_runs_sweep():
    with start_cluster() as cluster:
        assert cluster.base not in remove_leftover_clusters()
        with psycopg.connect(cluster.url.secret, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_the_backups_major_version_is_chosen_when_installed_else_the_newest(tmp_path):
    for major in ("13", "15", "16"):
        (tmp_path / major / "bin").mkdir(parents=True)
        (tmp_path / major / "bin" / "initdb").touch()
    (tmp_path / "common" / "bin").mkdir(parents=True)  # not a version: ignored

    assert server_bindir(15, tmp_path) == tmp_path / "15" / "bin"
    assert server_bindir(14, tmp_path) == tmp_path / "16" / "bin"
    assert server_bindir(None, tmp_path) == tmp_path / "16" / "bin"
    assert major_of("PostgreSQL 15.8 (Debian 15.8-0+deb12u1)") == 15
    assert major_of("unknown") is None


def test_without_any_server_binaries_the_error_says_to_install_postgresql(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="install the postgresql server package"):
        server_bindir(None, tmp_path)


def test_restore_proofs_run_one_at_a_time(tmp_path):
    entered: list[tuple[str, float, float]] = []

    def prove(name: str) -> None:
        with one_proof_at_a_time(tmp_path):
            began = time.monotonic()
            time.sleep(0.3)
            entered.append((name, began, time.monotonic()))

    threads = [threading.Thread(target=prove, args=(str(i),)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    spans = sorted((began, ended) for _, began, ended in entered)
    assert len(spans) == 3
    assert all(later[0] >= earlier[1] for earlier, later in pairwise(spans))
