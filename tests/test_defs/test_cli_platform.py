"""`pgvault backup`, `cleanup` and `status`: the CLI face of the platform."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dagster import AssetKey, DagsterInstance

from pgvault_assets.cli import main
from pgvault_assets.cli.platform import materialize_backup, retry_line
from pgvault_assets.engine.basics.clock import utcnow
from pgvault_assets.engine.basics.policy import Tier, tiers_of
from pgvault_assets.engine.vault.vault import Vault
from pgvault_assets.settings import load_settings
from test_defs.backup_history import write_history

BACKUP = AssetKey("database_backup")


def test_cli_backup_is_a_materialization_the_ui_shows(backup_env, yesterday, capsys):
    assert main(["backup"]) == 0

    assert f"backup {yesterday.isoformat()} stored" in capsys.readouterr().out
    with DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(BACKUP)
    assert event is not None
    assert event.asset_materialization.partition == yesterday.isoformat()


def test_without_dagster_home_backups_land_in_the_embedded_instance_under_pgvault(
    backup_env, yesterday, tmp_path, monkeypatch
):
    monkeypatch.delenv("DAGSTER_HOME")
    monkeypatch.setenv("PGVAULT_HOME", str(tmp_path / "pgvault"))

    manifest = materialize_backup(yesterday)

    home = tmp_path / "pgvault" / "dagster_home"
    with DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(BACKUP)
    assert event is not None
    assert event.asset_materialization.metadata["sha256"].value == manifest.sha256


def test_cli_backup_of_a_past_date_is_refused_in_one_line_without_a_traceback(
    backup_env, yesterday, capsys
):
    older = yesterday - timedelta(days=2)
    assert main(["backup", "--date", older.isoformat()]) == 2

    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: ") and f"only {yesterday.isoformat()}" in err


def test_cli_backup_that_fails_in_the_run_prints_one_line_not_dagsters_stack_trace(
    backup_env, monkeypatch, capsys
):
    monkeypatch.setenv("DATABASE_URL", backup_env.rsplit("/", 1)[0] + "/pgvault_test_absent")
    assert main(["backup"]) != 0

    captured = capsys.readouterr()
    printed = captured.out + captured.err
    (error,) = [line for line in printed.splitlines() if "error" in line.lower()]
    assert error.startswith("error: backup of ") and "does not exist" in error
    assert "Stack Trace" not in printed and "Traceback" not in printed


def test_cleanup_dry_run_shows_the_plan_and_deletes_nothing_then_cleanup_deletes(local_env, capsys):
    vault = Vault.from_settings(load_settings())
    today = utcnow().date()
    written = write_history(vault, today - timedelta(days=100), today - timedelta(days=1))
    tiers = tiers_of(m.date for m in written)

    assert main(["cleanup", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: would delete" in out
    assert len(vault.list_manifests()) == 100

    assert main(["cleanup"]) == 0
    remaining = vault.list_manifests()
    assert 30 < len(remaining) < 100
    assert min(m.date for m in remaining if tiers[m.date] is Tier.DAILY) >= (
        today - timedelta(days=30)
    )


def test_status_prints_the_manuals_dashboard(local_env, capsys):
    vault = Vault.from_settings(load_settings())
    today = utcnow().date()
    write_history(vault, today - timedelta(days=30), today - timedelta(days=1), size_bytes=2048)

    assert main(["status"]) == 0

    out = capsys.readouterr().out
    assert "last successful backup" in out and (today - timedelta(days=1)).isoformat() in out
    assert "100.0%" in out and "1.0 min" in out and "60.0 KiB" in out


def test_status_exits_non_zero_when_backups_are_stale(local_env, capsys):
    vault = Vault.from_settings(load_settings())
    today = utcnow().date()
    write_history(vault, today - timedelta(days=20), today - timedelta(days=5))
    assert main(["status"]) == 1
    assert "no backup has succeeded in the last 36 h" in capsys.readouterr().out


def test_a_retry_line_is_one_line_with_the_next_attempts_time_and_no_secret():
    failed_at = datetime(2025, 3, 1, 2, 0, 0, tzinfo=UTC).timestamp()
    reason = (
        "dagster._core.definitions.events.Failure: cannot connect to\n"
        "postgresql://app:hunter2@db.internal/app (refused)"
    )

    line = retry_line(1, reason, failed_at, 110.4)

    assert line == (
        "attempt 1 failed: cannot connect to postgresql://app:[redacted]@db.internal/app "
        "(refused); retrying at 02:01:50 UTC (in 110 s)"
    )


def test_an_unexpected_error_in_the_run_is_named_not_hidden_behind_the_retry_policy(
    backup_env, monkeypatch, capsys
):
    """A bug in the engine (here a TypeError) reaches the operator as what it is, in one
    line: not as the retry policy's "Exceeded max_retries of 0"."""

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("'<' not supported between instances of 'NoneType' and 'str'")

    monkeypatch.setattr("pgvault_assets.defs.backup.backup_database", broken)
    assert main(["backup", "--retries", "0"]) != 0

    printed = capsys.readouterr()
    (error,) = [line for line in printed.err.splitlines() if "error" in line.lower()]
    assert error.startswith("error: backup of ") and "Traceback" not in printed.err
    assert "TypeError: '<' not supported" in error and "max_retries" not in error


def test_the_cli_opens_the_operators_instance_as_configured_but_prints_its_runs_itself(
    tmp_path, monkeypatch
):
    """The CLI's runs print to the terminal, not through Dagster's compute logs (whose
    helper processes a Ctrl-C would reach): every other setting of the operator's
    dagster.yaml holds, the storage stays in DAGSTER_HOME, and the file is left as it was."""
    from pathlib import Path

    from pgvault_assets.cli.platform import open_instance

    home = tmp_path / "dagster_home"
    home.mkdir()
    text = "telemetry:\n  enabled: false\nrun_retries:\n  enabled: true\n  max_retries: 2\n"
    (home / "dagster.yaml").write_text(text)
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    with open_instance() as instance:
        assert type(instance.compute_log_manager).__name__ == "NoOpComputeLogManager"
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
        assert not instance.telemetry_enabled
        assert Path(instance.root_directory) == home
    assert (home / "dagster.yaml").read_text() == text
    assert sorted(p.name for p in home.iterdir() if p.suffix == ".yaml") == ["dagster.yaml"]


def test_an_unreadable_dagster_yaml_is_named_in_one_line(tmp_path, monkeypatch):
    import pytest

    from pgvault_assets.cli.platform import open_instance
    from pgvault_assets.errors import ConfigError

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry: [unclosed\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    with pytest.raises(ConfigError) as raised, open_instance():
        pass
    message = str(raised.value)
    assert "\n" not in message and str(home / "dagster.yaml") in message
