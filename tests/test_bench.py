"""The benchmarks time the pgvault they configure: nothing of the caller's shell decides what
is measured."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from pgvault_assets.settings import own_variables

BENCHLIB = Path(__file__).resolve().parent.parent / "bench" / "benchlib.py"


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
