"""The benchmarks time the pgvault they configure: nothing of the caller's shell decides what
is measured."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pgvault_assets.settings import own_variables

BENCH = Path(__file__).resolve().parent.parent / "bench"
BENCHLIB = BENCH / "benchlib.py"
SCRIPTS = sorted(path.name for path in BENCH.glob("*.py") if path != BENCHLIB)


def benchlib() -> ModuleType:
    """bench/benchlib.py, which the benchmarks import from their own directory."""
    spec = importlib.util.spec_from_file_location("benchlib", BENCHLIB)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_pgvault_setting_of_the_callers_shell_reaches_a_benchmark(
    monkeypatch: pytest.MonkeyPatch,
):
    for name in (*own_variables(), "DAGSTER_HOME", "DAGSTER_PG_URL"):
        monkeypatch.setenv(name, "from-the-shell")
    monkeypatch.setenv("PGVAULT_BENCH_UNRELATED", "kept")

    env = benchlib().environ_without_pgvault()

    assert "from-the-shell" not in env.values()
    assert env["PGVAULT_BENCH_UNRELATED"] == "kept"


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_benchmark_loads_and_says_how_to_run_it(script: str):
    """A benchmark is run by hand, not by the suite: this catches one that no longer loads (a
    renamed test helper it borrows, a moved module) before someone needs its figures."""
    shown = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: ")
